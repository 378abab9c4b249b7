r"""LOMMA augmented models: distil EfficientNet-B0/B1/B2 from a target on public CelebA.

Distil the three students from a trained target (a `launch/train.py` workdir or a model
checkpoint with a config.json):

  python launch/distill.py --config=configs/distill_celeba.py \
    --workdir=workdirs/vgg16_tldmi_aug --config.data.root=/path/to/celeba \
    --config.target.checkpoint=workdirs/vgg16_tldmi

Start the students from converted ImageNet weights, as LOMMA does, with
`--config.init.checkpoints.efficientnet_b0=/path/to/converted_b0` (and b1, b2).

Variants (`:key=value,...`): runlocal (tiny students on generated data; with no target
checkpoint it first trains a tiny target into `workdir/target`; about a minute on 2 CPU
cores). LOMMA's recipe (`training_augmodel/celeba.json`): 20 epochs of 468 steps of batch 64
per student, a few GPU-hours for all three; LOMMA reports no student accuracies.
"""

import ml_collections

from tldmi_jax import config_lib

_STUDENTS = ('efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2')
_RUNLOCAL_STUDENTS = ('efficientnet_b0_tiny', 'small_tiny')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, runlocal=False)
    placeholder = ml_collections.config_dict.placeholder
    students = _RUNLOCAL_STUDENTS if arg.runlocal else _STUDENTS
    config = ml_collections.ConfigDict()
    config.seed = 0  # Student init, data order, holdout split and stochastic depth.
    config.runlocal = arg.runlocal  # Without a target checkpoint, train a tiny target.
    config.overwrite = False  # True: replace a run with another config in --workdir.
    config.devices = 0  # Devices to train on (0: all; data parallel over the batch).
    # True: one process per host (or GPU), JAX's multi-controller runtime; docs/scaling.md.
    config.distributed = False

    # --- data ---
    config.data = ml_collections.ConfigDict()
    config.data.name = 'celeba_mi'  # Private dataset: test accuracy and class count.
    config.data.root = placeholder(str)  # Manual dir with the raw private files.
    config.data.public_name = ''  # Dataset of the public split ('' = data.name; ffhq_mi).
    config.data.public_root = placeholder(str)  # Its manual dir (None = data.root).
    config.data.data_dir = placeholder(str)  # Where prepared array_record files go.
    config.data.kwargs = ml_collections.ConfigDict()  # Extra builder arguments (synthetic).
    config.data.image_size = 64  # Input size of the target and the students.
    config.data.channels = 3  # Image channels.
    # Public images held out to measure agreement (0: train on all, as the original).
    config.data.holdout_fraction = 0.05
    config.data.max_public = 0  # Cap on public images (0: all 30,000).
    config.data.max_test = 0  # Cap on private test images (0: all).

    # --- target ---
    config.target = ml_collections.ConfigDict()
    config.target.checkpoint = placeholder(str)  # Target workdir or model checkpoint.
    config.target.arch = ''  # Its arch, if the checkpoint has no config.json.

    # --- students (model) ---
    config.students = students  # tldmi_jax.models.ARCHS names, distilled in order.
    config.model = ml_collections.ConfigDict()
    config.model.num_classes = 1000  # Must equal the target's (0: from the data).
    config.init = ml_collections.ConfigDict()
    # Pretrained (ImageNet) model checkpoint per student arch; None: random init.
    config.init.checkpoints = ml_collections.ConfigDict({a: placeholder(str) for a in students})
    config.init.dont_load = ('fc/.*',)  # Kept freshly initialised: the new head.

    # --- distillation loss ---
    config.kd = ml_collections.ConfigDict()
    config.kd.temperature = 1.0  # Softmax temperature T of the KL loss.
    config.kd.divide_by_t2 = False  # True: LOMMA's code, loss / T^2 (same at T = 1).

    # --- optim ---
    config.optim = ml_collections.ConfigDict()
    config.optim.name = 'sgd'  # sgd | adam.
    config.optim.lr = 0.01  # Initial learning rate.
    config.optim.momentum = 0.9  # SGD momentum (torch convention).
    config.optim.nesterov = False  # Plain momentum, as the original.
    config.optim.weight_decay = 1e-4  # torch-style, added to the gradient.
    config.optim.decay_every_epochs = 20  # StepLR step size (never reached in 20 epochs).
    config.optim.decay_factor = 0.5  # StepLR gamma.
    config.batch_size = 64  # Public images per step (last partial batch dropped).
    config.epochs = 20  # Per student (the original saves after epoch 19: use 19).
    config.total_steps = 0  # Per student; overrides epochs when > 0.

    # --- logging, checkpoints ---
    config.log_every_steps = 50  # Training-metric records in each student's dir.
    config.checkpoint_every_steps = 0  # Resumable state every N steps (0: every epoch).
    config.keep_checkpoints = 2  # Orbax checkpoints kept per student.

    if arg.runlocal:
        config.data.name = 'synthetic'  # Generated data, no files.
        # 4 private classes, 128 public images, at 32 px.
        config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
        config.data.image_size = 32  # Tiny models at 32 px.
        config.data.holdout_fraction = 0.125  # 16 of the 128 synthetic public images.
        config.model.num_classes = 0  # From the data (4).
        config.batch_size = 8  # 14 steps per epoch on 112 public images.
        config.total_steps = 10  # Per student.
        config.log_every_steps = 5  # Two training records per student.
        config.checkpoint_every_steps = 5  # So a rerun can resume mid-student.
    return config
