r"""TL-DMI targets on CelebA (64 px private identities), as in the original code.

Train a target (VGG16-BN with the official TL-DMI freeze, ImageNet-pretrained init):

  python launch/train.py --config=configs/celeba.py:arch=vgg16,defense=tldmi \
    --workdir=workdirs/vgg16_tldmi --config.data.root=/path/to/celeba_manual_dir \
    --config.init.checkpoint=/path/to/converted_vgg16_bn_in1k

Variants (`:key=value,...`): arch=vgg16|ir152|facenet64|facenet,
defense=none|tldmi|mid|bido|negls|dpsgd or a '+'-joined combination (tldmi+bido,
tldmi+dpsgd, ...), runlocal (tiny model on generated data, 5-10 s on 2 CPU cores).
Original budgets: VGG16 200 epochs at lr 0.08, batch 64 (a GPU-day); IR-152 100 epochs;
FaceNet64 200 epochs at batch 8. Released accuracies: VGG16 88.26, IR152 91.16,
FaceNet64 88.50 (no defense), evaluation FaceNet 95.88.

Baseline defenses (hyperparameters: `config.defense.*`, see config_lib.classifier_config):

  python launch/train.py --config=configs/celeba.py:arch=vgg16,defense=tldmi+bido \
    --workdir=workdirs/vgg16_tldmi_bido --config.data.root=/path/to/celeba_manual_dir \
    --config.init.checkpoint=/path/to/converted_vgg16_bn_in1k
  python launch/train.py --config=configs/celeba.py:arch=vgg16,defense=mid \
    --workdir=workdirs/vgg16_mid_0.01 --config.defense.mid_beta=0.01 \
    --config.data.root=/path/to/celeba_manual_dir

The originals trained their baselines with other recipes (kept here as the TL-DMI one, so
that only the defense differs): BiDO VGG16 Adam lr 1e-4, 50 epochs, batch 64; MID VGG16
SGD lr 1e-2, 50 epochs; PPA (negls) Adam lr 1e-3, 100 epochs, batch 128.

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
# MID's CelebA beta sweep (AlanPeng0897/Defend_MI, VGG16: natural accuracy 79.82/70.98/59.14).
_MID_BETAS = (0.003, 0.01, 0.02)


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
    # --- defenses (used only when `defense` names them) ---
    config.defense.mid_beta_sweep = _MID_BETAS  # Betas a sweep trains (mid_beta is one run's).
    config.defense.bido_lambda_x = 0.05  # BiDO's published VGG16 HSIC weights (0.05, 0.5),
    config.defense.bido_lambda_y = 0.5  # also used for the IR models (none published).
    if arg.runlocal:
        config_lib.runlocal_classifier(config)
        if 'tldmi' in arg.defense.split('+'):
            config.defense.fine_tune_from = _TINY_CUT[arg.arch]
        # About 14 steps per epoch: start smoothing in epoch 1 and reach alpha in epoch 3.
        config.defense.ls_start_epoch = 1
        config.defense.ls_end_epoch = 3
    return config
