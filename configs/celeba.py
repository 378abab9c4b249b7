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
    config = config_lib.classifier_config(
        dataset='celeba_mi',
        arch=arg.arch,
        num_classes=1000,
        image_size=recipe['image_size'],
        channels=3,
        lr=recipe['lr'],
        epochs=recipe['epochs'],
        batch_size=recipe['batch_size'],
        defense=arg.defense,
        dont_load=_HEAD[arg.arch],
    )
    if arg.runlocal:
        config_lib.runlocal_classifier(config)
        if arg.defense == 'tldmi':
            config.defense.fine_tune_from = _TINY_CUT[arg.arch]
    return config
