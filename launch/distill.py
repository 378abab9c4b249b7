r"""Distils LOMMA's augmented models (EfficientNet-B0/B1/B2) from a trained target.

  python launch/distill.py --config=configs/distill_celeba.py \
    --workdir=workdirs/vgg16_aug --config.data.root=/path/to/celeba \
    --config.target.checkpoint=workdirs/vgg16_tldmi

Rerunning the same command skips finished students and resumes the unfinished one.
"""

import json

from absl import flags
from ml_collections import config_flags

from tldmi_jax.pipelines import runlocal
from tldmi_jax.train import distill
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    config = runlocal.fill_in('distill', _CONFIG.value, _WORKDIR.value)  # Only under :runlocal.
    summary = distill.train_and_evaluate(config, _WORKDIR.value)
    target = summary['target']
    print(f'target: private test acc@1 {target["test/acc@1"]:.4f}')
    for s in summary['students']:
        agree = s.get('holdout/agreement@1', float('nan'))
        print(
            f'{s["name"]}: public holdout agreement@1 {agree:.4f}, '
            f'private test acc@1 {s["test/acc@1"]:.4f}'
        )
    print(json.dumps(summary))


if __name__ == '__main__':
    cli.run(main)
