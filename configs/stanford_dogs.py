r"""TL-DMI targets on Stanford Dogs at 224 px (the PPA setting) and the 299 px evaluation model.

Train a target (ResNet-152, TL-DMI: layer4 + fc fine-tuned, ImageNet init) on the whole
(uncropped) images:

  python launch/convert.py --kind=resnet152 --src=/path/to/torchvision_resnet152.pth \
    --dst=converted/resnet152_in1k
  python launch/train.py --config=configs/stanford_dogs.py:arch=resnet152,defense=tldmi \
    --workdir=workdirs/dogs/resnet152_tldmi --config.data.root=/data/stanford_dogs \
    --config.data.data_dir=/data/tfds --config.init.checkpoint=converted/resnet152_in1k

The evaluation model (Inception-v3 at 299 px, ImageNet init, no defense) on the
bounding-box crops (`config.data.kwargs.cropped`), as PPA's:

  python launch/convert.py --kind=inception_v3 --src=/path/to/torchvision_inception_v3.pth \
    --dst=converted/inception_v3_in1k
  python launch/train.py --config=configs/stanford_dogs.py:arch=inception_v3 \
    --workdir=workdirs/dogs/inception_v3 --config.data.root=/data/stanford_dogs \
    --config.data.data_dir=/data/tfds --config.init.checkpoint=converted/inception_v3_in1k

Variants (`:key=value,...`): arch=resnet18|resnet101|resnet152|densenet121|densenet169|
inception_v3, defense=none|tldmi|negls|bido or a '+'-joined combination (tldmi+negls,
tldmi+bido, ...; any defense of configs/celeba.py works), runlocal (the tiny model of the
arch's family on generated 32 px data, 75 px for Inception; about 10 s on 2 CPU cores).

The recipe is PPA's (`configs/training/targets/ResNet152_Stanford_Dogs.yaml`): 120 breeds,
PPA's 90/10 split of the merged official lists (seed 42), whole images resized to 224 x 224
(`stanford_dogs_uncropped`), RandomResizedCrop(224, scale 0.85-1, ratio 1),
ColorJitter(0.2, 0.2, 0.1, 0.1), horizontal flip, Adam lr 1e-3 (0.9, 0.999) without weight
decay, MultiStepLR at epochs 75 and 90 (x 0.1), 100 epochs of batch 128, no validation
split (the final model is kept). The evaluation model follows
`configs/training/evaluation/Inception_V3_Stanford_Dogs.yaml`: the bounding-box crops
(`stanford_dogs_cropped`) at 299 x 299, the same augmentation, one milestone at epoch 80.
TL-DMI freezes as DaredEVAL's `freeze_layers=6` on a ResNet (everything before layer4); on
a DenseNet the analogue `freeze_layers=9` (everything before denseblock4). PPA's negative
label smoothing (`defense=negls`): alpha -0.05 after a warm-up from epoch 50 to 75
(`config.defense.ls_*`). Accuracies and runtimes of the full recipe have not been measured
here.

Differences from PPA: inputs stay in [0, 1] (PPA normalises to [-1, 1]); the last partial
batch of an epoch is dropped; the Inception-v3 is trained without its auxiliary classifier
(PPA adds the loss of torchvision's AuxLogits).
"""

import ml_collections

from tldmi_jax import config_lib

# arch -> its input side, the head kept fresh on an ImageNet init, TL-DMI's `freeze_layers`
# (None: no official value) and the tiny model of its family for runlocal.
_ARCHS = {
    'resnet18': dict(size=224, head='fc', freeze_layers=6, tiny='resnet18_tiny'),
    'resnet101': dict(size=224, head='fc', freeze_layers=6, tiny='resnet18_tiny'),
    'resnet152': dict(size=224, head='fc', freeze_layers=6, tiny='resnet18_tiny'),
    'densenet121': dict(size=224, head='classifier', freeze_layers=9, tiny='densenet121_tiny'),
    'densenet169': dict(size=224, head='classifier', freeze_layers=9, tiny='densenet121_tiny'),
    'inception_v3': dict(size=299, head='fc', freeze_layers=None, tiny='inception_v3_tiny'),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, arch='resnet152', defense='none', runlocal=False)
    if arg.arch not in _ARCHS:
        raise ValueError(f'arch must be one of {sorted(_ARCHS)}, got {arg.arch!r}.')
    spec = _ARCHS[arg.arch]
    evaluation = arg.arch == 'inception_v3'
    # Shared classifier block (each field commented in config_lib.classifier_config).
    config = config_lib.classifier_config(
        dataset='stanford_dogs_mi',  # PPA's 90/10 split of the official lists.
        arch=arg.arch,
        num_classes=120,  # Breeds.
        image_size=spec['size'],  # 224 (targets) or 299 (Inception-v3).
        channels=3,
        lr=1e-3,  # Adam.
        epochs=100,
        batch_size=128,
        defense=arg.defense,
        dont_load=(f'{spec["head"]}/.*',),  # ImageNet init: the 1000-class head is not loaded.
    )
    # --- data ---
    config.data.train_split = 'train'  # PPA's 90 %.
    config.data.test_split = 'test'  # PPA's 10 %.
    config.data.kwargs.cropped = evaluation  # Bounding-box crops for the evaluation model.
    config.data.preprocess = ''  # The dataset's own: T.Resize([size, size]).
    config.data.val_fraction = 0.0  # PPA: validation_set_size 0, the final model is kept.
    config.data.random_resized_crop.scale = (0.85, 1.0)  # RandomResizedCrop(size, ...).
    config.data.random_resized_crop.ratio = (1.0, 1.0)
    config.data.color_jitter = (0.2, 0.2, 0.1, 0.1)  # Brightness, contrast, saturation, hue.
    # --- freeze (TL-DMI: layer4 + fc of a ResNet) ---
    if 'tldmi' in arg.defense.split('+') and spec['freeze_layers'] is not None:
        config.defense.freeze_layers = spec['freeze_layers']
    # --- optim ---
    config.optim.name = 'adam'
    config.optim.b1, config.optim.b2 = 0.9, 0.999
    config.optim.weight_decay = 0.0
    config.optim.milestones = (80,) if evaluation else (75, 90)  # MultiStepLR (epochs).
    config.optim.gamma = 0.1
    if arg.runlocal:
        _runlocal(config, spec)
    return config


def _runlocal(config: ml_collections.ConfigDict, spec: dict) -> None:
    """The tiny model of the arch's family on generated data, with the same recipe."""
    config_lib.runlocal_classifier(config)  # Synthetic data, 60 steps of batch 8.
    config.model.arch = spec['tiny']
    config.data.train_split, config.data.test_split = 'private_train', 'private_test'
    config.data.preprocess = ''  # The synthetic set's own.
    if spec['size'] == 299:  # The tiny Inception needs 75 px.
        config.data.image_size = config.data.kwargs.image_size = 75
    config.optim.milestones = (2, 3)  # 16 steps per epoch: the lr drops at steps 32 and 48.
    config.defense.ls_start_epoch, config.defense.ls_end_epoch = 1, 3  # negls within 60 steps.
