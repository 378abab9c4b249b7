r"""Evaluates an attack: attack accuracy, KNN distance, FID/KID/PRDC, natural accuracy.

  python launch/evaluate.py --config=configs/evaluate_celeba.py --workdir=workdirs/eval_gmi \
    --config.attack_dir=workdirs/attack_gmi --config.eval_model.checkpoint=workdirs/eval_facenet

Writes metrics.json, per_identity.csv, groups.csv, pairs.png and report.md in --workdir;
private-image features are cached there, so a rerun only recomputes what changed.
"""

import json

from absl import flags
from ml_collections import config_flags

from tldmi_jax.evaluation import evaluate, report
from tldmi_jax.pipelines import runlocal
from tldmi_jax.reporting import files
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (feature cache reused).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    config = runlocal.fill_in('evaluate', _CONFIG.value, _WORKDIR.value)  # Only under :runlocal.
    result = evaluate.evaluate(config, _WORKDIR.value)
    print(report.format_table(result))
    print(json.dumps({k: files.jsonable(v) for k, v in result.items()}))


if __name__ == '__main__':
    cli.run(main)
