r"""TL-DMI targets on CelebA (64 px private identities), as in the original code.

Train a target (VGG16-BN with the official TL-DMI freeze, ImageNet-pretrained init):

  python launch/train.py --config=configs/celeba.py:arch=vgg16,defense=tldmi \
    --workdir=workdirs/vgg16_tldmi --config.data.root=/path/to/celeba_manual_dir \
    --config.init.checkpoint=/path/to/converted_vgg16_bn_in1k

Variants (`:key=value,...`): arch=vgg16|ir152|facenet64|facenet, defense=none|tldmi,
runlocal (tiny model on generated data, 5-10 s on 2 CPU cores).
Original budgets: VGG16 200 epochs at lr 0.08, batch 64 (a GPU-day); IR-152 100 epochs;
FaceNet64 200 epochs at batch 8. Released accuracies: VGG16 88.26, IR152 91.16,
FaceNet64 88.50 (no defense), evaluation FaceNet 95.88.

Inspect the freeze plan without computing anything:

  python launch/describe.py --config=configs/celeba.py:arch=ir152,defense=tldmi \
    --config.defense.freeze_layers=46
"""

import ml_collections

from tldmi_jax import config_lib

# Original per-architecture recipe (hosytuyen/TL-DMI classify.json): lr, epochs, batch.
_RECIPES = {
    'vgg16': dict(lr=0.08, epochs=200, batch_size=64, image_size=64),
    'ir152': dict(lr=0.01, epochs=100, batch_size=64, image_size=64),
    'facenet64': dict(lr=0.008, epochs=200, batch_size=8, image_size=64),
    'facenet': dict(lr=0.01, epochs=30, batch_size=64, image_size=112),
}
# Pretrained checkpoints come without the new head (ImageNet VGG / MS1M IR backbones).
_HEAD = {
    'vgg16': ('head_bn/.*', 'fc/.*'),
    'ir152': ('output_layer/.*', 'fc/.*'),
    'facenet64': ('output_layer/.*', 'fc/.*'),
    'facenet': ('output_layer/.*', 'fc/.*'),
}
# runlocal: tiny models have fewer units, so TL-DMI cuts at a named group instead.
_TINY_CUT = {'vgg16': 'conv4_2', 'ir152': 'stage4', 'facenet64': 'stage4', 'facenet': 'stage4'}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, arch='vgg16', defense='none', runlocal=False)
    if arg.arch not in _RECIPES:
        raise ValueError(f'arch must be one of {sorted(_RECIPES)}, got {arg.arch!r}.')
    recipe = _RECIPES[arg.arch]
    config = ml_collections.ConfigDict()
    config.seed = 0  # Model init, data order, flips and dropout all derive from it.

    # --- data ---
    config.data = ml_collections.ConfigDict()
    config.data.name = 'celeba_mi'  # TFDS builder (tldmi_jax/data).
    config.data.root = ml_collections.config_dict.placeholder(str)  # Manual dir (required).
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # Prepared cache.
    config.data.kwargs = ml_collections.ConfigDict()  # Extra builder arguments.
    config.data.image_size = recipe['image_size']  # Crop 108 -> resize (64, or 112 for E).
    config.data.channels = 3  # Image channels fed to the model.
    config.data.flip = True  # Random horizontal flip in training (original).
    config.data.val_fraction = 0.1  # Carved from private_train for model selection.
    config.data.max_train = 0  # Cap on training images (0: all).
    config.data.max_test = 0  # Cap on test images (0: all).
    config.select_on = 'val'  # 'test' reproduces the original's selection on test.

    # --- model ---
    config.model = ml_collections.ConfigDict()
    config.model.arch = arg.arch  # tldmi_jax.models.ARCHS key.
    config.model.num_classes = 1000  # Private identities.
    config.model.kwargs = ml_collections.ConfigDict()  # Extra constructor arguments.
    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = ml_collections.config_dict.placeholder(str)  # Pretrained model.
    config.init.dont_load = _HEAD[arg.arch]  # Regexes kept freshly initialised.

    # --- freeze (defense) ---
    config.defense = ml_collections.ConfigDict()
    config.defense.name = arg.defense  # none | tldmi.
    config.defense.freeze_layers = -1  # Original index k (-1: the arch's official one).
    config.defense.fine_tune_from = ''  # Named cut point, e.g. 'stage4' or 'conv4_2'.
    config.defense.theta_c = 0.0  # Trainable-parameter budget (0: unused).
    config.defense.rules = ''  # 'regex:frozen;.*:trainable' rules (first match wins).
    config.defense.freeze_stem = False  # True freezes the IR stem as the paper intends.
    config.defense.bn_policy = 'update'  # update (original) | freeze.

    # --- optim ---
    config.optim = ml_collections.ConfigDict()
    config.optim.name = 'sgd'
    config.optim.lr = recipe['lr']  # Constant (the original builds no schedule).
    config.optim.momentum = 0.9
    config.optim.nesterov = False
    config.optim.weight_decay = 1e-4  # Not applied to frozen parameters.
    config.batch_size = recipe['batch_size']
    config.epochs = recipe['epochs']
    config.total_steps = 0  # Overrides epochs when > 0.

    # --- evals, logging, checkpoints ---
    config.eval_every_steps = 0  # 0: every epoch.
    config.log_every_steps = 50
    config.checkpoint_every_steps = 0  # 0: every epoch.
    config.keep_checkpoints = 2

    if arg.runlocal:
        config.data.name = 'synthetic'
        config.data.image_size = 32
        config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
        config.model.arch = f'{arg.arch}_tiny'
        config.model.num_classes = 0  # From the data.
        config.optim.lr = 0.01
        config.batch_size = 8
        config.total_steps = 60
        config.eval_every_steps = 30
        config.checkpoint_every_steps = 10
        config.log_every_steps = 10
        if arg.defense == 'tldmi':
            config.defense.fine_tune_from = _TINY_CUT[arg.arch]
    return config
