r"""Prints the freeze plan of a config: per-group parameters and trainable counts.

  python launch/describe.py --config=configs/celeba.py:arch=ir152,defense=tldmi \
    --config.defense.freeze_layers=46

The last line is one JSON object with `total_params` and `trainable_params`.
No weights are computed (jax.eval_shape), so full-size models take seconds.
"""

import json

from absl import flags
from ml_collections import config_flags

from tldmi_jax import defenses
from tldmi_jax.defenses import transfer
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.mark_flags_as_required(['config'])


def main(argv):
    del argv
    plan = defenses.describe(_CONFIG.value)
    print(f'freeze spec: {plan.source}; BatchNorm policy: {plan.bn_policy}')
    print(transfer.format_table(plan))
    print(
        json.dumps({'total_params': plan.total_params, 'trainable_params': plan.trainable_params})
    )


if __name__ == '__main__':
    cli.run(main)
