"""Config helpers: ':arg' variants and the protocol hash.

Configs are `ml_collections` files with `get_config(arg)`; `arg` is the text after
the colon in `--config=configs/celeba.py:arch=vgg16,defense=tldmi,runlocal`.
"""

import hashlib
import json
import os
import re
import sys
from typing import Any

import ml_collections
from absl import logging


def _coerce(text: str, default: Any) -> Any:
    """Converts `text` to the type of `default`."""
    if isinstance(default, bool):
        if text.lower() in ('1', 'true', 'yes', ''):
            return True
        if text.lower() in ('0', 'false', 'no'):
            return False
        raise ValueError(f'Expected a boolean, got {text!r}.')
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_arg(arg: str | None, lazy: bool = False, **spec: Any) -> ml_collections.ConfigDict:
    """Parses `'a=1,b,c=x'` into a ConfigDict typed like the defaults in `spec`.

    A bare key (`runlocal`) means True. Values take the type of their default.

    Args:
      arg: the config argument string (may be None or empty).
      lazy: accept keys that are not in `spec` (kept as strings).
      **spec: the known keys and their defaults.

    Returns:
      A ConfigDict with every key of `spec`, overridden by `arg`.

    Raises:
      ValueError: for an unknown key (unless `lazy`) or an unparsable value.
    """
    result = ml_collections.ConfigDict(dict(spec))
    if not arg:
        return result
    for item in arg.split(','):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition('=')
        key = key.strip()
        if key not in spec:
            if not lazy:
                raise ValueError(
                    f'Unknown config argument {key!r}; known: {", ".join(sorted(spec))}.'
                )
            result[key] = value if eq else True
            continue
        default = spec[key]
        if not eq and not isinstance(default, bool):
            raise ValueError(f'Config argument {key!r} needs a value ({key}=...).')
        result[key] = _coerce(value, default) if eq else True
    return result


def command_line_keys(block: str, argv: list[str] | None = None) -> list[str]:
    """The names `NAME` of the `--config.<block>.NAME=...` overrides on the command line.

    For config blocks whose fields the user names (the user study's arms): the config file
    declares them, so that `--config.arms.bido=DIR` works without listing `bido` first.
    In command-line order, without repeats; `argv` defaults to `sys.argv`.
    """
    pattern = re.compile(rf'--config\.{re.escape(block)}\.([A-Za-z_][A-Za-z0-9_]*)(=|$)')
    found = []
    for arg in sys.argv if argv is None else argv:
        match = pattern.match(arg)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """Serialises a (resolved) config to stable, sorted JSON."""
    return json.dumps(config.to_dict(), sort_keys=True, indent=2, default=str)


def protocol_hash(payload: Any) -> str:
    """A short, stable hash of anything JSON-serialisable (splits, identities, seeds...)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def classifier_config(
    *,
    dataset: str,
    arch: str,
    num_classes: int,
    image_size: int,
    channels: int,
    lr: float,
    epochs: int,
    batch_size: int,
    defense: str = 'none',
    dont_load: tuple[str, ...] = (),
) -> ml_collections.ConfigDict:
    """The shared block of every classifier-training config (targets, eval models).

    Config files call this with their setting's values and then override fields.
    """
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.seed = 0  # Model init, data order, flips and dropout all derive from it.
    config.overwrite = False  # True: replace a run with another config in --workdir.
    config.devices = 0  # Devices to train on (0: all; data parallel over the batch).
    # True: one process per host (or GPU), JAX's multi-controller runtime; docs/scaling.md.
    config.distributed = False

    # --- data ---
    config.data = ml_collections.ConfigDict()
    config.data.name = dataset  # A tldmi_jax.data.DATASETS name.
    config.data.root = placeholder(str)  # Manual dir with the raw files.
    config.data.data_dir = placeholder(str)  # Where prepared array_record files go.
    config.data.kwargs = ml_collections.ConfigDict()  # Extra builder arguments (synthetic).
    config.data.train_split = 'private_train'  # Training (and validation) images.
    config.data.test_split = 'private_test'  # Natural accuracy.
    config.data.image_size = image_size  # Model input size after the dataset's crop.
    config.data.channels = channels  # Image channels fed to the model.
    config.data.preprocess = ''  # data.get_preprocess name ('': data.name); e.g. facescrub_ppa.
    config.data.flip = True  # Random horizontal flip in training (original).
    # On-device training augmentation before the flip, as PPA's recipe (off by default):
    config.data.random_resized_crop = ml_collections.ConfigDict()
    config.data.random_resized_crop.scale = ()  # Area fraction range, e.g. (0.85, 1.0); (): off.
    config.data.random_resized_crop.ratio = (1.0, 1.0)  # Aspect w/h range (PPA's; tv: 3/4, 4/3).
    # torchvision ColorJitter (brightness, contrast, saturation, hue), e.g. PPA's
    # (0.2, 0.2, 0.1, 0.1); (): off.
    config.data.color_jitter = ()
    config.data.val_fraction = 0.1  # Carved from private_train for model selection.
    config.data.max_train = 0  # Cap on training images (0: all).
    config.data.max_test = 0  # Cap on test images (0: all).
    config.select_on = 'val'  # 'test' reproduces the original's selection on test.

    # --- model ---
    config.model = ml_collections.ConfigDict()
    config.model.arch = arch  # tldmi_jax.models.ARCHS key.
    config.model.num_classes = num_classes  # Private identities (0: from the data).
    config.model.kwargs = ml_collections.ConfigDict()  # Extra constructor arguments.
    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = placeholder(str)  # Pretrained model checkpoint or workdir.
    config.init.dont_load = dont_load  # Regexes kept freshly initialised (the new head).

    # --- freeze (defense) ---
    config.defense = ml_collections.ConfigDict()
    config.defense.name = defense  # none|tldmi|mid|bido|negls|dpsgd, or '+'-joined: tldmi+bido.
    config.defense.freeze_layers = -1  # Original index k (-1: the arch's official one).
    config.defense.fine_tune_from = ''  # Cut point: stage1..N, head (1-based) or a layer group.
    config.defense.theta_c = 0.0  # Trainable-parameter budget (0: unused).
    config.defense.rules = ''  # 'regex:frozen;.*:trainable' rules (first match wins).
    config.defense.freeze_stem = False  # True freezes the IR stem as the paper intends.
    config.defense.bn_policy = 'update'  # update (original) | freeze.
    # Used only when `name` contains the defense (see tldmi_jax/defenses/). These are the only
    # defaults: defenses.build reads every field below and fails if one is missing.
    config.defense.mid_beta = 0.003  # MID: KL weight (mi-defense's default; 0.01, 0.02 stronger).
    config.defense.mid_k = 0  # MID: bottleneck size (0: half the feature size, as the original).
    config.defense.bido_measure = 'hsic'  # BiDO: hsic (normalised, original) | coco | hsic_biased.
    config.defense.bido_lambda_x = 0.05  # BiDO: weight of dep(input, hidden), minimised.
    config.defense.bido_lambda_y = 0.5  # BiDO: weight of dep(hidden, label), maximised.
    config.defense.bido_sigma = 5.0  # BiDO: Gaussian kernel width (variance 2 sigma^2 dim).
    config.defense.bido_label_kernel = 'linear'  # BiDO: kernel on one-hot labels: linear|gaussian.
    config.defense.bido_layers = ''  # BiDO: comma-separated modules ('': each stage's last unit).
    config.defense.ls_alpha = -0.05  # negls: smoothing factor (< 0: with warm-up; > 0: constant).
    config.defense.ls_start_epoch = 50  # negls: alpha = 0 before this epoch (PPA).
    config.defense.ls_end_epoch = 75  # negls: alpha reached at this epoch (PPA).
    config.defense.ls_original_ramp = False  # negls: PPA's slope 1/(epochs - start) (jumps at end).
    config.defense.dp_clip_norm = 1.0  # dpsgd: per-example L2 clipping bound C.
    config.defense.dp_noise_multiplier = 1.0  # dpsgd: noise std / C (sigma).
    config.defense.dp_delta = 1e-5  # dpsgd: delta at which epsilon is reported.
    config.defense.dp_accountant = 'rdp'  # dpsgd: rdp | pld (dp_accounting).

    # --- optim ---
    config.optim = ml_collections.ConfigDict()
    config.optim.name = 'sgd'  # sgd | adam.
    config.optim.lr = lr  # Constant unless milestones are given (the original has no schedule).
    config.optim.momentum = 0.9  # SGD only.
    config.optim.nesterov = False  # SGD only.
    config.optim.b1 = 0.9  # Adam only.
    config.optim.b2 = 0.999  # Adam only.
    config.optim.weight_decay = 1e-4  # Not applied to frozen parameters.
    config.optim.milestones = ()  # MultiStepLR epochs, e.g. PPA's (75, 90); (): constant lr.
    config.optim.gamma = 0.1  # lr factor at each milestone.
    config.batch_size = batch_size
    config.epochs = epochs
    config.total_steps = 0  # Overrides epochs when > 0.

    # --- evals, logging, checkpoints ---
    config.eval_every_steps = 0  # 0: every epoch.
    config.log_every_steps = 50
    config.checkpoint_every_steps = 0  # 0: every epoch.
    config.keep_checkpoints = 2
    return config


# Every GAN prior's architecture options (`tldmi_jax.priors.make_prior`): the one place they
# live. The originals' sizes, and the tiny widths of tests and runlocal (changes only).
PRIOR_OPTIONS: dict[str, dict[str, Any]] = {
    'gmi': dict(
        z_dim=100,  # Latent size.
        g_dim=64,  # Generator base width.
        d_dim=64,  # Discriminator base width.
        channels=3,  # Image channels (1: grayscale).
    ),
    'kedmi': dict(
        z_dim=100,
        g_dim=64,
        d_dim=64,
        mbd_features=64,  # Minibatch-discrimination kernels.
        mbd_kernel_dims=50,  # Dimensions per kernel.
        channels=3,
    ),
    'plgmi': dict(
        z_dim=128,
        g_dim=64,
        d_dim=64,
        bottom_width=4,  # First generator feature map side.
        out_act='unit',  # 'unit': images in [0, 1]; 'tanh': the original's raw tanh.
        channels=3,
    ),
    # StyleGAN2-ADA (PPA), converted from the released pickles: FFHQ's options (1024 px).
    'stylegan2': dict(
        z_dim=512,
        w_dim=512,  # Intermediate latent (w) size.
        mapping_layers=8,  # Fully connected layers z -> w.
        layer_features=None,  # Hidden width of the mapping network (None: w_dim).
        mapping_lr=0.01,  # Learning-rate multiplier of the mapping network (weight gain).
        channel_base=32768,  # Feature maps: min(channel_base // res, channel_max).
        channel_max=512,
        conv_clamp=None,  # Clamp of the convolution outputs (None: off; 256 in ADA configs).
        resample_filter=(1, 3, 3, 1),  # FIR taps of the 2x up-sampling.
        channels=3,
    ),
}
TINY_PRIOR_OPTIONS: dict[str, dict[str, Any]] = {
    'gmi': dict(g_dim=8, d_dim=8),
    'kedmi': dict(g_dim=8, d_dim=8, mbd_features=16, mbd_kernel_dims=8),
    'plgmi': dict(z_dim=32, g_dim=8, d_dim=8),
    'stylegan2': dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16),
}


def prior_options(kind: str, tiny: bool = False) -> dict[str, Any]:
    """The architecture options of prior `kind` (tiny widths for tests and runlocal).

    Raises:
      ValueError: for an unknown kind.
    """
    if kind not in PRIOR_OPTIONS:
        raise ValueError(f'Unknown prior kind {kind!r}; known: {", ".join(PRIOR_OPTIONS)}.')
    return {**PRIOR_OPTIONS[kind], **(TINY_PRIOR_OPTIONS[kind] if tiny else {})}


def runlocal_classifier(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a classifier config to a tiny model on generated data (seconds on a CPU)."""
    config.data.name = 'synthetic'
    config.data.image_size = 32
    config.data.channels = 3
    config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
    config.model.arch = f'{config.model.arch}_tiny'
    config.model.num_classes = 0  # From the data.
    config.optim.lr = 0.01
    config.batch_size = 8
    config.total_steps = 60
    config.eval_every_steps = 30
    config.checkpoint_every_steps = 10
    config.log_every_steps = 10
    return config


# The 224/299 px classifiers of the PPA setting (configs/facescrub.py, stanford_dogs.py):
# arch -> its input side, the head kept fresh on an ImageNet init, TL-DMI's `freeze_layers`
# (None: no official value) and the tiny model of its family for runlocal.
PPA_ARCHS: dict[str, dict[str, Any]] = {
    'resnet18': dict(size=224, head='fc', freeze_layers=6, tiny='resnet18_tiny'),
    'resnet101': dict(size=224, head='fc', freeze_layers=6, tiny='resnet18_tiny'),
    'resnet152': dict(size=224, head='fc', freeze_layers=6, tiny='resnet18_tiny'),
    'densenet121': dict(size=224, head='classifier', freeze_layers=9, tiny='densenet121_tiny'),
    'densenet169': dict(size=224, head='classifier', freeze_layers=9, tiny='densenet121_tiny'),
    'inception_v3': dict(size=299, head='fc', freeze_layers=None, tiny='inception_v3_tiny'),
}


def ppa_classifier_config(
    dataset: str,
    num_classes: int,
    arch: str,
    defense: str,
    runlocal: bool,
    data: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """PPA's training recipe (`configs/training/targets/ResNet152_*.yaml`, and
    `evaluation/Inception_V3_*.yaml` for `inception_v3`) on the classifier config.

    Args:
      dataset: the private data (`facescrub_mi`, `stanford_dogs_mi`).
      num_classes: its classes.
      arch: one of `PPA_ARCHS`.
      defense: as `classifier_config`'s (`tldmi` fine-tunes the arch's official depth).
      runlocal: the tiny model of the arch's family on generated data, the same recipe.
      data: the dataset's own `config.data` fields (preprocessing, builder kwargs); runlocal
        replaces them with the generated data's.

    Raises:
      ValueError: an arch not in `PPA_ARCHS`.
    """
    if arch not in PPA_ARCHS:
        raise ValueError(f'arch must be one of {sorted(PPA_ARCHS)}, got {arch!r}.')
    spec = PPA_ARCHS[arch]
    evaluation = arch == 'inception_v3'
    config = classifier_config(
        dataset=dataset,
        arch=arch,
        num_classes=num_classes,
        image_size=spec['size'],  # 224 (targets) or 299 (Inception-v3).
        channels=3,
        lr=1e-3,  # Adam.
        epochs=100,
        batch_size=128,
        defense=defense,
        dont_load=(f'{spec["head"]}/.*',),  # ImageNet init: the 1000-class head is not loaded.
    )
    # --- data ---
    config.data.train_split = 'train'  # PPA's 90 %.
    config.data.test_split = 'test'  # PPA's 10 %.
    config.data.val_fraction = 0.0  # PPA: validation_set_size 0, the final model is kept.
    config.data.random_resized_crop.scale = (0.85, 1.0)  # RandomResizedCrop(size, ...).
    config.data.random_resized_crop.ratio = (1.0, 1.0)
    config.data.color_jitter = (0.2, 0.2, 0.1, 0.1)  # Brightness, contrast, saturation, hue.
    for key, value in (data or {}).items():
        config.data[key] = value
    # --- freeze (TL-DMI: layer4 + fc of a ResNet) ---
    if 'tldmi' in defense.split('+') and spec['freeze_layers'] is not None:
        config.defense.freeze_layers = spec['freeze_layers']
    # --- optim ---
    config.optim.name = 'adam'
    config.optim.b1, config.optim.b2 = 0.9, 0.999
    config.optim.weight_decay = 0.0
    config.optim.milestones = (80,) if evaluation else (75, 90)  # MultiStepLR (epochs).
    config.optim.gamma = 0.1
    if runlocal:
        runlocal_classifier(config)  # Synthetic data, 60 steps of batch 8.
        config.model.arch = spec['tiny']
        config.data.train_split, config.data.test_split = 'private_train', 'private_test'
        config.data.preprocess = ''  # The synthetic set's own.
        if spec['size'] == 299:  # The tiny Inception needs 75 px.
            config.data.image_size = config.data.kwargs.image_size = 75
        config.optim.milestones = (2, 3)  # 16 steps per epoch: the lr drops at steps 32, 48.
        config.defense.ls_start_epoch, config.defense.ls_end_epoch = 1, 3  # negls in 60 steps.
    return config


# Every attack's default hyperparameters: the one place they live. `config.attack` fields
# left unset (None) take these (`tldmi_jax.attacks.hyperparameters`).
ATTACK_DEFAULTS: dict[str, dict[str, Any]] = {
    'gmi': dict(
        steps=3000,  # iters_mi of TL-DMI's attack config (LOMMA's: 2400).
        lr=0.02,
        momentum=0.9,  # Nesterov SGD on z, as the original's hand-written update.
        lam=100.0,  # Weight of the identity loss.
        clip=1.0,  # z is clamped to [-clip, clip] after every update.
        num_seeds=5,
        samples=1,  # Reconstructions per (identity, seed).
        iden_loss='ce',
        use_augmented=False,
        reg_weight=0.0,
        seed_chunk=0,  # Seeds optimised in one call (0: automatic; LatentSearch).
    ),
    'kedmi': dict(
        steps=3000,
        lr=0.02,  # Adam on (mu, log_var).
        lam=100.0,
        clip=1.0,
        num_seeds=1,  # One distribution per identity ...
        samples=5,  # ... from which 5 reconstructions are drawn.
        init_log_var=0.0,  # TL-DMI's; LOMMA's upstream uses 1.0.
        iden_loss='ce',
        use_augmented=False,
        reg_weight=0.0,
        seed_chunk=0,  # Seeds optimised in one call (0: automatic; LatentSearch).
    ),
    'plgmi': dict(
        steps=600,
        lr=0.1,  # Adam on z.
        num_seeds=5,
        samples=1,
        iden_loss='margin',  # Max-margin loss on the target.
        views=2,  # Augmented views of each image per step.
        seed_chunk=0,  # Seeds optimised in one call (0: automatic; LatentSearch).
    ),
    # PPA on FaceScrub with the FFHQ StyleGAN2 (configs/attacking/FaceScrub_FFHQ.yaml);
    # configs/attack_ppa.py:dataset=dogs sets Stanford Dogs' changes (PPA_DOGS below).
    'ppa': dict(
        steps=50,  # PPA's num_epochs: Adam steps on every w (CelebA 70, Stanford Dogs 100).
        lr=0.005,
        b1=0.1,  # Adam betas (0.1, 0.1).
        b2=0.1,
        num_seeds=200,  # num_candidates: the best candidates kept per identity and optimised.
        samples=1,
        final=50,  # samples_per_target: the reconstructions kept per identity.
        candidates=2000,  # search_space_size: random w scored once (CelebA 5000).
        psi=0.5,  # Truncation of the candidates' w ...
        cutoff=8,  # ... on layers 0..7 (None: all).
        candidate_flip=True,  # Candidate score averaged with the flipped image's.
        candidate_batch=25,  # Candidates synthesised and scored at once.
        single_w=True,  # One w for every layer (False: all num_ws optimised).
        crop=800,  # Centre crop of the generator's output before the resize (0: none).
        clip_images=False,  # PPA's `clip: false`: the loss sees unclipped images.
        crop_scale=(0.9, 1.0),  # RandomResizedCrop of the loss's view (an empty tuple: none) ...
        crop_ratio=(1.0, 1.0),  # ... and its aspect ratios.
        select_views=100,  # Random transformations scoring each optimised w.
        select_scale=(0.5, 0.9),  # Their RandomResizedCrop scale ...
        select_ratio=(0.8, 1.2),  # ... and ratio (plus a horizontal flip).
        select_batch=100,  # Transformed views scored at once.
        seed_chunk=0,  # Instances of an identity optimised at once (0: automatic).
    ),
}
# Stanford Dogs with the AFHQ-Dog StyleGAN2 (configs/attacking/Stanford_Dogs_AFHQ.yaml).
PPA_DOGS: dict[str, Any] = dict(steps=100, lr=0.01, crop=0, crop_scale=(0.75, 1.0))
# LOMMA on top of gmi/kedmi: the variant, the feature-regulariser weight (TL-DMI's lam 1.0)
# and the public images averaged into p_reg.
LOMMA_DEFAULTS: dict[str, Any] = dict(variant='ours', reg_weight=1.0, p_reg_samples=5000)


def attack_name(attack: str) -> tuple[str, str]:
    """`(name, lomma)` of a `:attack=` argument: `gmi`, `gmi+lomma` or the old `lomma_gmi`."""
    if attack.startswith('lomma_'):
        base = attack[len('lomma_') :]
        logging.warning(':attack=%s is deprecated: use :attack=%s+lomma', attack, base)
        return base, LOMMA_DEFAULTS['variant']
    if attack.endswith('+lomma'):
        return attack[: -len('+lomma')], LOMMA_DEFAULTS['variant']
    return attack, ''


def attack_config(attack: str = 'gmi', runlocal: bool = False) -> ml_collections.ConfigDict:
    """The attack config (configs/attack_celeba.py); `runlocal` shrinks it to seconds.

    `attack` is a base attack (`gmi`, `kedmi`, `plgmi`), `gmi+lomma`/`kedmi+lomma` (LOMMA,
    variant `ours`) or the old `lomma_gmi`/`lomma_kedmi` (the same).
    """
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.seed = 0  # Every (identity, seed) key derives from it.
    config.runlocal = runlocal  # Make tiny target/prior/augmented models if not given.
    config.overwrite = False  # True: replace a run with another config in --workdir.
    config.devices = 0  # Devices the identities are sharded over (0: all).
    # True: one process per host (or GPU), JAX's multi-controller runtime; docs/scaling.md.
    config.distributed = False

    # --- attack (None: the attack's default in ATTACK_DEFAULTS above) ---
    config.attack = ml_collections.ConfigDict()
    name, lomma = attack_name(attack)
    config.attack.name = name  # gmi | kedmi | plgmi (attacks.ATTACKS).
    config.attack.lomma = lomma  # LOMMA on gmi/kedmi: '' (off) | baseline | L_logit | L_aug | ours.
    config.attack.steps = placeholder(int)  # Iterations per identity batch.
    config.attack.lr = placeholder(float)  # Latent learning rate.
    config.attack.lam = placeholder(float)  # Identity-loss weight (GMI/KEDMI: 100).
    config.attack.num_seeds = placeholder(int)  # Independent latents per identity.
    config.attack.samples = placeholder(int)  # Images drawn per latent (KEDMI: 5).
    config.attack.clip = placeholder(float)  # Clamp range of z.
    config.attack.variant = placeholder(str)  # Deprecated alias of `lomma`.
    config.attack.reg_weight = placeholder(float)  # LOMMA feature-regulariser weight.
    config.attack.p_reg_samples = placeholder(int)  # Public images for LOMMA's p_reg.
    config.attack.init_log_var = placeholder(float)  # KEDMI log-variance init (TL-DMI: 0).
    # Seeds of an identity optimised in one call (0: automatic: all, but on CPU at most 64
    # instances per call, which is faster there). Speed and memory, not the result (up to
    # float rounding).
    config.attack.seed_chunk = placeholder(int)
    config.attack.reference_batch = 60  # Losses are divided by it, as the original's mean.
    if name == 'ppa':  # PPA's own fields (None: ATTACK_DEFAULTS['ppa']).
        config.attack.reference_batch = 25  # PPA's batch of w.
        for field in ('b1', 'b2', 'psi'):
            config.attack[field] = placeholder(float)
        for field in ('final', 'candidates', 'cutoff', 'crop', 'candidate_batch'):
            config.attack[field] = placeholder(int)
        for field in ('select_views', 'select_batch'):
            config.attack[field] = placeholder(int)
        for field in ('candidate_flip', 'single_w', 'clip_images'):
            config.attack[field] = placeholder(bool)
        for field in ('crop_scale', 'crop_ratio', 'select_scale', 'select_ratio'):
            config.attack[field] = placeholder(tuple)

    # --- identities ---
    config.identities = ml_collections.ConfigDict()
    config.identities.first = 0  # First attacked class.
    config.identities.count = 300  # Number of attacked classes.
    config.identities.batch_size = 60  # Identities optimised together (one compiled batch).

    # --- inputs ---
    config.target = ml_collections.ConfigDict()
    config.target.checkpoint = placeholder(str)  # Trainer workdir or model dir.
    config.target.arch = placeholder(str)  # Needed only without the trainer's config.json.
    config.prior = ml_collections.ConfigDict()
    config.prior.checkpoint = placeholder(str)  # launch/train_gan.py workdir or prior dir.
    config.augmented = ml_collections.ConfigDict()
    config.augmented.checkpoints = ''  # Comma-separated LOMMA augmented-model dirs.
    config.data = ml_collections.ConfigDict()
    config.data.name = 'celeba_mi'  # Public data for p_reg.
    config.data.root = placeholder(str)
    config.data.data_dir = placeholder(str)
    config.data.kwargs = ml_collections.ConfigDict()
    config.data.image_size = 64  # Used when the target has no config.json.

    # --- checkpoints ---
    config.checkpoint_every_steps = 300  # Steps per compiled chunk and between checkpoints.

    if runlocal:
        config.attack.steps = 12
        config.attack.p_reg_samples = 32
        config.identities.count = 4
        config.identities.batch_size = 2
        config.checkpoint_every_steps = 4
        config.data.name = 'synthetic'
        config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
        config.data.image_size = 32
    return config


def evaluate_config(runlocal: bool = False) -> ml_collections.ConfigDict:
    """The evaluation config (`launch/evaluate.py`): TL-DMI's 64 px protocol by default.

    `configs/evaluate_celeba.py` is this; `configs/evaluate_ppa.py` switches it to Plug & Play
    Attacks' protocol (`distance='ppa'`, FaceNet's delta_face, FID on all reconstructions).
    `runlocal` shrinks it to seconds on generated data.
    """
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.seed = 0  # KID subsets, FID real-image subsampling, runlocal stand-ins.
    # True: a multi-process run (JAX's multi-controller runtime, docs/scaling.md): every process
    # evaluates, process 0 writes.
    config.distributed = False
    config.runlocal = False  # Make missing upstream artefacts (tiny, generated data).
    config.overwrite = False  # True: replace a run with another config in --workdir.

    # --- data ---
    config.data = ml_collections.ConfigDict()
    config.data.name = 'celeba_mi'  # A tldmi_jax.data.DATASETS name (the private data).
    config.data.root = placeholder(str)  # Manual dir with the raw files.
    config.data.data_dir = placeholder(str)  # Where prepared array_record files go.
    config.data.kwargs = ml_collections.ConfigDict()  # Extra builder arguments (synthetic).
    config.data.preprocess = ''  # '': the dataset's own (data.get_preprocess); e.g. facescrub_ppa.
    config.data.train_split = 'private_train'  # KNN references, FID real images, grid.
    config.data.test_split = 'private_test'  # Target natural accuracy.

    # --- attack ---
    config.attack_dir = placeholder(str)  # Attack workdir holding reconstructions.npz.

    # --- models ---
    config.eval_model = ml_collections.ConfigDict()
    config.eval_model.checkpoint = placeholder(str)  # Trainer workdir or model checkpoint.
    # '': from the workdir's config.json, else facenet (distance=knn_squared_min) or
    # inception_v3 (distance=ppa).
    config.eval_model.arch = ''
    config.eval_model.num_classes = 0  # 0: from the checkpoint's fc layer.
    # 0: from config.json, else 112 (64 -> 112 resize) or 299 (PPA).
    config.eval_model.image_size = 0
    config.target = ml_collections.ConfigDict()
    config.target.checkpoint = placeholder(str)  # '': the one attack.json names, if present.
    config.target.arch = ''  # '': from config.json, else attack.json.
    config.target.num_classes = 0  # 0: from the checkpoint's fc layer.
    config.target.image_size = 0  # 0: from config.json, else attack.json's image_size.
    config.batch_size = 64  # Images per forward pass of the classifiers and the FaceNet.

    # --- evals ---
    config.reproduce_top5_bug = False  # True: acc@5 of the last seed per batch (original).
    # Feature distance (evaluation.knn.DISTANCES): 'knn_squared_min' reports attack/knn_dist
    # (TL-DMI); 'ppa' the same mean minimum squared L2 distance as attack/delta_eval, plus
    # attack/delta_face in FaceNet's embedding (face_model below).
    config.distance = 'knn_squared_min'
    config.knn = ml_collections.ConfigDict()
    config.knn.chunk_size = 256  # Reconstructions per distance matrix product.
    config.face_model = ml_collections.ConfigDict()  # PPA's delta_face (distance='ppa' only).
    config.face_model.enabled = True  # False: no delta_face (not a face dataset: dogs).
    # Converted facenet-pytorch 20180402-114759-vggface2.pt (kind facenet_vggface2); unset:
    # delta_face skipped with a warning (random weights under runlocal).
    config.face_model.checkpoint = placeholder(str)
    config.face_model.arch = 'inception_resnet_v1'  # models.inception_resnet_v1.FACE_MODELS key.
    # [0, 1] -> FaceNet input: 'ppa' (2x - 1, PPA's) | 'fixed_standardization' (facenet-pytorch).
    config.face_model.input_mapping = 'ppa'
    config.fid = ml_collections.ConfigDict()
    config.fid.enabled = True  # Compute FID, KID and PRDC (needs Inception weights).
    config.fid.inception_checkpoint = placeholder(str)  # Converted pt_inception-2015-12-05.
    config.fid.arch = 'fid_inception'  # tldmi_jax.models.inception.INCEPTIONS key.
    config.fid.original_range_mapping = False  # True: the original's (x*0.5+0.5)*255.
    config.fid.reconstructions = 'successful'  # Fake set: 'successful' (TL-DMI) | 'all' (PPA).
    # Private images preprocessed at the 'reconstructions' side (TL-DMI) or straight at the
    # 'inception' side (PPA), then resized to 299 by the Inception.
    config.fid.real_size = 'reconstructions'
    config.fid.batch_size = 50  # Images per Inception forward pass.
    config.fid.max_real = 0  # Cap on private images for FID (0: all of the identities).
    config.fid.kid_subsets = 100  # KID: number of random subsets averaged.
    config.fid.kid_subset_size = 1000  # KID: maximum subset size.
    config.fid.prdc_k = 3  # Nearest neighbours for precision/recall/density/coverage.

    # --- report ---
    config.report = ml_collections.ConfigDict()
    config.report.max_pairs = 30  # Reconstruction/nearest-image pairs in pairs.png.
    config.report.pairs_per_row = 5  # Pairs per grid row.

    if runlocal:
        config.runlocal = True
        config.data.name = 'synthetic'
        config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
        config.fid.arch = 'fid_inception_tiny'
        config.fid.batch_size = 16
        config.fid.kid_subsets = 10
        config.face_model.arch = 'inception_resnet_v1_tiny'
        config.batch_size = 16
        config.report.max_pairs = 8
    return config


def load_config_file(spec: str, base_dir: str = '') -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` from a config file given as 'path.py[:arg]'.

    Args:
      spec: e.g. 'gan_celeba.py:prior=kedmi,runlocal'; a relative path is looked up in
        `base_dir`, then in the current directory.
      base_dir: directory of the config files (e.g. the sweep config's `configs_dir`).

    Raises:
      FileNotFoundError: naming every path tried.
    """
    import importlib.util

    path, _, arg = spec.partition(':')
    candidates = [path] if os.path.isabs(path) else [os.path.join(base_dir, path), path]
    for candidate in candidates:
        if os.path.isfile(candidate):
            name = f'_tldmi_config_{os.path.splitext(os.path.basename(candidate))[0]}'
            module_spec = importlib.util.spec_from_file_location(name, candidate)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module.get_config(arg or None)
    raise FileNotFoundError(f'Config file {path!r} not found (tried {candidates}).')
