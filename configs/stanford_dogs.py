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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, arch='resnet152', defense='none', runlocal=False)
    # The evaluation model trains on the bounding-box crops, the targets on whole images.
    kwargs = ml_collections.ConfigDict(dict(cropped=arg.arch == 'inception_v3'))
    return config_lib.ppa_classifier_config(
        'stanford_dogs_mi',  # PPA's 90/10 split of the official lists.
        120,  # Breeds.
        arg.arch,
        arg.defense,
        arg.runlocal,
        data=dict(kwargs=kwargs, preprocess=''),  # The dataset's own: T.Resize([size, size]).
    )
