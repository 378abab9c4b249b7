r"""The embedded demo: a small CNN on Fashion-MNIST's private classes 0-4.

  python launch/train.py --config=configs/fashion_mnist.py --workdir=workdirs/demo

Data: Debian's `dataset-fashion-mnist` package (`make demo` installs it) or
`--config.data.root=DIR` with the four idx files. Private split = classes 0-4 (30,000
train / 5,000 test images), public split = classes 5-9, following GMI's MNIST protocol.
Runs in about a minute on 2 CPU cores; natural accuracy about 0.9.
Variants: defense=none|tldmi (freezes the first two conv blocks), runlocal.
"""

import ml_collections

from tldmi_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the demo config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, defense='none', runlocal=False)
    config = ml_collections.ConfigDict()
    config.seed = 0  # Model init, data order, flips all derive from it.

    # --- data ---
    config.data = ml_collections.ConfigDict()
    config.data.name = 'fashion_mnist_mi'
    config.data.root = ml_collections.config_dict.placeholder(str)  # Idx dir (default: Debian's).
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # Unused (in memory).
    config.data.kwargs = ml_collections.ConfigDict()
    config.data.image_size = 32  # 28 -> 32 as in GMI's MNIST setting.
    config.data.channels = 1  # Image channels fed to the model.
    config.data.flip = True  # Horizontal flips are label-preserving for clothing.
    config.data.val_fraction = 0.1
    config.data.max_train = 0
    config.data.max_test = 0
    config.select_on = 'val'

    # --- model ---
    config.model = ml_collections.ConfigDict()
    config.model.arch = 'small'
    config.model.num_classes = 5
    config.model.kwargs = ml_collections.ConfigDict()
    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = ml_collections.config_dict.placeholder(str)
    config.init.dont_load = ('fc/.*',)

    # --- freeze (defense) ---
    config.defense = ml_collections.ConfigDict()
    config.defense.name = arg.defense
    config.defense.freeze_layers = -1
    config.defense.fine_tune_from = 'block2' if arg.defense == 'tldmi' else ''
    config.defense.theta_c = 0.0
    config.defense.rules = ''
    config.defense.freeze_stem = False
    config.defense.bn_policy = 'update'

    # --- optim ---
    config.optim = ml_collections.ConfigDict()
    config.optim.name = 'sgd'
    config.optim.lr = 0.05
    config.optim.momentum = 0.9
    config.optim.nesterov = False
    config.optim.weight_decay = 1e-4
    config.batch_size = 128
    config.epochs = 2
    config.total_steps = 0

    # --- evals, logging, checkpoints ---
    config.eval_every_steps = 0
    config.log_every_steps = 50
    config.checkpoint_every_steps = 100
    config.keep_checkpoints = 2

    if arg.runlocal:
        config.data.max_train = 256
        config.data.max_test = 64
        config.batch_size = 16
        config.total_steps = 10
        config.checkpoint_every_steps = 5
        config.log_every_steps = 5
    return config
