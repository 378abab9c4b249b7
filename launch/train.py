r"""Trains a classifier (target, evaluation model or pre-training) with any defense.

  python launch/train.py --config=configs/celeba.py:arch=vgg16,defense=tldmi \
    --workdir=workdirs/vgg16_tldmi --config.data.root=/path/to/celeba

Rerunning the same command resumes from the last checkpoint in --workdir.
"""

import json

from absl import flags
from ml_collections import config_flags

from tldmi_jax.train import classifier
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    final = classifier.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(f'natural accuracy (private test, top-1): {final["target/natural_acc"]:.4f}')
    print(json.dumps(final))


if __name__ == '__main__':
    cli.run(main)
