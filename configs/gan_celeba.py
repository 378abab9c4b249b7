r"""GAN priors on CelebA's public split: GMI (general), KEDMI and PLG-MI (per target).

GMI's WGAN-GP prior (public data only; the original trains 120 epochs, about a GPU-day):

  python launch/train_gan.py --config=configs/gan_celeba.py:prior=gmi \
    --workdir=workdirs/gan_gmi --config.data.root=/path/to/celeba_manual_dir

KEDMI's semi-supervised GAN and PLG-MI's conditional GAN are re-trained for each target:

  python launch/train_gan.py --config=configs/gan_celeba.py:prior=kedmi \
    --workdir=workdirs/gan_kedmi_vgg16_tldmi --config.data.root=/path/to/celeba_manual_dir \
    --config.target.checkpoint=workdirs/vgg16_tldmi
  python launch/train_gan.py --config=configs/gan_celeba.py:prior=plgmi \
    --workdir=workdirs/gan_plgmi_vgg16_tldmi --config.data.root=/path/to/celeba_manual_dir \
    --config.target.checkpoint=workdirs/vgg16_tldmi

FFHQ as the public set: `--config.data.name=ffhq_mi --config.data.root=/path/to/ffhq`.
Variants (`:key=value,...`): prior=gmi|kedmi|plgmi, runlocal (tiny prior at 32 px on
generated data, batch 8, a few steps; kedmi/plgmi train a tiny target first when no
checkpoint is given; 20-60 s on 2 CPU cores). Rerunning a command resumes its workdir.
"""

import ml_collections

from tldmi_jax import config_lib

# Original recipes: GMI/KEDMI `config/celeba/training_GAN/*/celeba.json` of TL-DMI, PLG-MI
# `train_cgan.py` defaults (Adam betas (0, 0.9), 30k G iterations x n_dis 5).
_RECIPES = {
    'gmi': dict(b1=0.5, b2=0.999, epochs=120, total_steps=0),
    'kedmi': dict(b1=0.5, b2=0.999, epochs=120, total_steps=0),
    'plgmi': dict(b1=0.0, b2=0.9, epochs=0, total_steps=150_000),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, prior='gmi', runlocal=False)
    if arg.prior not in _RECIPES:
        raise ValueError(f'prior must be one of {sorted(_RECIPES)}, got {arg.prior!r}.')
    recipe = _RECIPES[arg.prior]
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.seed = 0  # Init, latents, interpolates and data order all derive from it.
    config.runlocal = arg.runlocal  # Lets kedmi/plgmi train a tiny target when none is given.
    config.overwrite = False  # True: replace a run with another config in --workdir.
    config.devices = 0  # Devices to train on (0: all; data parallel over the batch).
    # True: one process per host (or GPU), JAX's multi-controller runtime; docs/scaling.md.
    config.distributed = False

    # --- data ---
    config.data = ml_collections.ConfigDict()
    config.data.name = 'celeba_mi'  # A tldmi_jax.data.DATASETS name (ffhq_mi also works).
    config.data.root = placeholder(str)  # Manual dir with the raw files.
    config.data.data_dir = placeholder(str)  # Where prepared array_record files go.
    config.data.split = 'public'  # The GAN never sees private identities.
    config.data.image_size = 64  # Prior output size after the dataset's crop.
    config.data.kwargs = ml_collections.ConfigDict()  # Extra builder arguments (synthetic).
    config.data.dequantize = arg.prior == 'plgmi'  # Add U(0, 1/256) to reals (PLG-MI).

    # --- model (prior) ---
    # Architecture options (z_dim, g_dim, d_dim, channels, ...): config_lib.PRIOR_OPTIONS.
    config.prior = ml_collections.ConfigDict(config_lib.prior_options(arg.prior, arg.runlocal))
    config.prior.kind = arg.prior  # gmi | kedmi | plgmi.
    config.prior.num_classes = 0 if arg.prior == 'gmi' else 1000  # Target classes (0: target's).

    # --- target (kedmi, plgmi) ---
    config.target = ml_collections.ConfigDict()
    config.target.checkpoint = placeholder(str)  # Trainer workdir or model dir of the target.
    config.target.arch = 'vgg16'  # Architecture of the tiny target runlocal trains.
    config.target.runlocal_steps = 60  # Steps of that tiny target.
    config.target.train_mode = False  # KEDMI: True runs T in training mode (original code).

    # --- losses ---
    config.gp_weight = 10.0  # GMI gradient-penalty weight.
    config.kedmi = ml_collections.ConfigDict()
    config.kedmi.unlabeled_weight = 0.5  # Weight of the unsupervised D term.
    config.kedmi.entropy_weight = 1e-4  # Weight of the G entropy term.
    config.plgmi = ml_collections.ConfigDict()
    config.plgmi.alpha = 0.2  # Weight of the max-margin inversion loss in the G loss.
    config.plgmi.top_n = 30  # Public images pseudo-labelled per class.
    config.plgmi.augment = True  # Augment fakes before the target (Kornia list).

    # --- optim ---
    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 2e-4  # Adam, constant, same for G and D.
    config.optim.b1 = recipe['b1']  # Adam beta1.
    config.optim.b2 = recipe['b2']  # Adam beta2.
    config.batch_size = 64  # Real images per D step.
    config.n_critic = 5  # D steps per G step.
    config.epochs = recipe['epochs']  # Passes over the public data (D steps).
    config.total_steps = recipe['total_steps']  # D steps; overrides epochs when > 0.

    # --- logging, samples, checkpoints ---
    config.log_every_steps = 100  # metrics.jsonl and progress bar.
    config.sample_every_steps = 2000  # samples/step_{N}.png of fixed latents.
    config.num_samples = 32  # Images in each sample grid.
    config.checkpoint_every_steps = 1000  # Resumable state.
    config.keep_checkpoints = 2  # Checkpoints kept.

    if arg.runlocal:
        config.data.name = 'synthetic'
        config.data.image_size = 32
        config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
        if arg.prior != 'gmi':
            config.prior.num_classes = 4
        if arg.prior == 'plgmi':
            config.plgmi.top_n = 16
        config.target.runlocal_steps = 30
        config.batch_size = 8
        config.total_steps = 12
        config.log_every_steps = 2
        config.sample_every_steps = 6
        config.num_samples = 8
        config.checkpoint_every_steps = 4
    return config
