r"""Runs a model-inversion attack against a target.

  python launch/attack.py --config=configs/attack_celeba.py:attack=kedmi \
    --workdir=DIR --config.target.checkpoint=... --config.prior.checkpoint=...

Writes reconstructions.npz, grids/batch_*.png and attack.json; rerunning resumes.
"""

import json

from absl import flags
from ml_collections import config_flags

from tldmi_jax.attacks import runner
from tldmi_jax.pipelines import runlocal
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    config = runlocal.fill_in('attack', _CONFIG.value, _WORKDIR.value)  # Only under :runlocal.
    summary = runner.run(config, _WORKDIR.value)
    keys = ('attack', 'num_reconstructions', 'protocol_hash', 'iterations_per_second')
    print(json.dumps({k: summary[k] for k in keys}))


if __name__ == '__main__':
    cli.run(main)
