r"""Per-layer empirical Fisher information of a target, for classification and MI.

  python launch/fisher.py --config=configs/fisher_celeba.py --workdir=workdirs/fisher_vgg16 \
    --config.target.checkpoint=workdirs/vgg16_none --config.attack_dir=workdirs/attack_gmi

Writes fisher.json, fisher.csv and fisher.png in --workdir.
"""

import json

from absl import flags
from ml_collections import config_flags

from tldmi_jax.analysis import fisher
from tldmi_jax.pipelines import runlocal
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    config = runlocal.fill_in('fisher', _CONFIG.value, _WORKDIR.value)  # Only under :runlocal.
    result = fisher.analyze(config, _WORKDIR.value)
    print(f'{"group":<16} {"params":>12} {"classification":>15} {"MI":>15}  (normalised)')
    for g in result['groups']:
        print(
            f'{g["group"]:<16} {g["num_params"]:>12,d} '
            f'{g["classification_normalised"]:>15.4f} {g["mi_normalised"]:>15.4f}'
        )
    print(json.dumps({'num_examples': result['num_examples'], 'hash': result['protocol_hash']}))


if __name__ == '__main__':
    cli.run(main)
