r"""Model-inversion attacks on a CelebA target (64 px), the original protocol.

  python launch/attack.py --config=configs/attack_celeba.py:attack=gmi \
    --workdir=workdirs/vgg16_tldmi/gmi \
    --config.target.checkpoint=workdirs/vgg16_tldmi \
    --config.prior.checkpoint=workdirs/gan_gmi

attack = gmi | kedmi | plgmi, or gmi+lomma | kedmi+lomma (LOMMA's `ours` on that base;
another variant: --config.attack.lomma=baseline|L_logit|L_aug; the old names lomma_gmi and
lomma_kedmi still work). LOMMA also needs `--config.augmented.checkpoints=DIR,DIR,DIR`
(from launch/distill.py) and the public data (`--config.data.root=...`) for p_reg.
Protocol: identities 0..299 in 5 batches of 60, 5 seeds (KEDMI: 1 distribution, 5
samples), 3000 iterations (PLG-MI: 600). Hyperparameters left at None take the defaults
in `tldmi_jax.config_lib.ATTACK_DEFAULTS` (the one place they live).
`runlocal` makes a tiny target and prior first and runs in well under a minute on CPU.
"""

import ml_collections

from tldmi_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the attack config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, attack='gmi', runlocal=False)
    return config_lib.attack_config(arg.attack, arg.runlocal)
