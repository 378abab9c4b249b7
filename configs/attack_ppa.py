r"""Plug & Play Attacks (PPA) with a StyleGAN2 prior on 224 px targets (the paper's
high-resolution table).

FaceScrub (530 identities) with the FFHQ StyleGAN2 (`ffhq.pkl`, converted once):

  python launch/convert.py --kind=stylegan2_ada --src=/path/to/ffhq.pkl \
    --dst=workdirs/stylegan2_ffhq
  python launch/attack.py --config=configs/attack_ppa.py:dataset=facescrub \
    --workdir=workdirs/resnet152_tldmi/ppa \
    --config.target.checkpoint=workdirs/resnet152_tldmi \
    --config.prior.checkpoint=workdirs/stylegan2_ffhq

Stanford Dogs (120 breeds) with the AFHQ-Dog StyleGAN2 (`afhqdog.pkl`):
`:dataset=dogs` (no centre crop, 100 steps at lr 0.01, crops of scale 0.75-1).

Protocol (PPA's configs): every class attacked; 2000 candidates scored once, the best 200
of each identity optimised for 50 steps (Adam lr 0.005, betas (0.1, 0.1), Poincare loss),
the 50 most robust of them kept. Hyperparameters left at None take
`tldmi_jax.config_lib.ATTACK_DEFAULTS['ppa']`. Memory: `identities.batch_size` x
`attack.seed_chunk` instances are optimised at once (every one a StyleGAN2 synthesis and a
target pass); on one 80-140 GB GPU start with batch_size 1 and seed_chunk 25 at 1024 px.

`runlocal`: a tiny random StyleGAN2 at 32 px and a tiny target on generated data, about a
minute on 2 CPU cores.
"""

import ml_collections

from tldmi_jax import config_lib

# Classes of the private data; every one is attacked (PPA's `targets: all`).
_CLASSES = {'facescrub': 530, 'dogs': 120}
_DATA = {'facescrub': 'facescrub_mi', 'dogs': 'stanford_dogs_mi'}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the PPA attack config for `arg` (see the module docstring)."""
    # `attack` is accepted for the sweep, which appends the attack's name to its config file.
    arg = config_lib.parse_arg(arg, dataset='facescrub', attack='ppa', runlocal=False)
    if arg.attack != 'ppa':
        raise ValueError(f'configs/attack_ppa.py runs PPA only, not {arg.attack!r}.')
    if arg.dataset not in _CLASSES:
        raise ValueError(f'Unknown dataset {arg.dataset!r}; use one of {sorted(_CLASSES)}.')
    config = config_lib.attack_config('ppa', arg.runlocal)
    if arg.dataset == 'dogs':
        for key, value in config_lib.PPA_DOGS.items():
            config.attack[key] = value
    config.identities.count = _CLASSES[arg.dataset]
    config.identities.batch_size = 1
    config.attack.seed_chunk = 25  # PPA's batch of 25 w.
    config.checkpoint_every_steps = 10
    if not arg.runlocal:
        config.data.name = _DATA[arg.dataset]
        config.data.image_size = 224
    else:
        # A tiny StyleGAN2 (32 px) against a tiny target on generated data.
        config.attack.update(
            dict(
                steps=6,
                candidates=24,
                num_seeds=6,
                final=2,
                crop=24,
                candidate_batch=8,
                select_views=4,
                select_batch=8,
                seed_chunk=3,
            )
        )
        config.identities.count = 4
        config.identities.batch_size = 2
        config.checkpoint_every_steps = 2
    return config
