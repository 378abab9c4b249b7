r"""Trains a GAN prior (GMI, KEDMI or PLG-MI) on public data.

  python launch/train_gan.py --config=configs/gan_celeba.py:prior=gmi \
    --workdir=workdirs/gan_gmi --config.data.root=/path/to/celeba
  python launch/train_gan.py --config=configs/gan_celeba.py:prior=kedmi,runlocal \
    --workdir=/tmp/gan_kedmi

Rerunning the same command resumes from the last checkpoint in --workdir. The prior is
written to --workdir/prior (read it with `tldmi_jax.priors.load_prior`).
"""

import json

from absl import flags
from ml_collections import config_flags

from tldmi_jax.pipelines import runlocal
from tldmi_jax.train import gan
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    config = runlocal.fill_in('gan', _CONFIG.value, _WORKDIR.value)  # Only under :runlocal.
    summary = gan.train_and_evaluate(config, _WORKDIR.value)
    print(f'prior written to {summary["prior_dir"]} after {summary["steps"]} steps')
    print(json.dumps(summary))


if __name__ == '__main__':
    cli.run(main)
