r"""TL-DMI targets on FaceScrub at 224 px (the PPA setting) and the 299 px evaluation model.

Train a target (ResNet-152, TL-DMI: layer4 + fc fine-tuned, ImageNet init):

  python launch/convert.py --kind=resnet152 --src=/path/to/torchvision_resnet152.pth \
    --dst=converted/resnet152_in1k
  python launch/train.py --config=configs/facescrub.py:arch=resnet152,defense=tldmi \
    --workdir=workdirs/facescrub/resnet152_tldmi --config.data.root=/data/facescrub \
    --config.data.data_dir=/data/tfds --config.init.checkpoint=converted/resnet152_in1k

The evaluation model (Inception-v3 at 299 px, ImageNet init, no defense):

  python launch/convert.py --kind=inception_v3 --src=/path/to/torchvision_inception_v3.pth \
    --dst=converted/inception_v3_in1k
  python launch/train.py --config=configs/facescrub.py:arch=inception_v3 \
    --workdir=workdirs/facescrub/inception_v3 --config.data.root=/data/facescrub \
    --config.data.data_dir=/data/tfds --config.init.checkpoint=converted/inception_v3_in1k

Variants (`:key=value,...`): arch=resnet18|resnet101|resnet152|densenet121|densenet169|
inception_v3, defense=none|tldmi|negls|bido or a '+'-joined combination (tldmi+negls,
tldmi+bido, ...; any defense of configs/celeba.py works), runlocal (the tiny model of the
arch's family on generated 32 px data, 75 px for Inception; about 10 s on 2 CPU cores).

The recipe is PPA's (`configs/training/targets/ResNet152_FaceScrub.yaml`): 530 identities,
PPA's 90/10 split (seed 42), the shorter side resized to 224 px, RandomResizedCrop(224,
scale 0.85-1, ratio 1), ColorJitter(0.2, 0.2, 0.1, 0.1), horizontal flip, Adam lr 1e-3
(0.9, 0.999) without weight decay, MultiStepLR at epochs 75 and 90 (x 0.1), 100 epochs of
batch 128, no validation split (the final model is kept). The evaluation model follows
`configs/training/evaluation/Inception_V3_FaceScrub.yaml`: the same augmentation at 299 px,
one milestone at epoch 80. TL-DMI freezes as DaredEVAL's `freeze_layers=6` on a ResNet
(everything before layer4); on a DenseNet the analogue `freeze_layers=9` (everything before
denseblock4). PPA's negative label smoothing (`defense=negls`): alpha -0.05 after a warm-up
from epoch 50 to 75 (`config.defense.ls_*`). Accuracies and runtimes of the full recipe
have not been measured here.

Differences from PPA: inputs stay in [0, 1] (PPA normalises to [-1, 1]); the last partial
batch of an epoch is dropped; the Inception-v3 is trained without its auxiliary classifier
(PPA adds the loss of torchvision's AuxLogits).
"""

import ml_collections

from tldmi_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, arch='resnet152', defense='none', runlocal=False)
    return config_lib.ppa_classifier_config(
        'facescrub_mi',  # Cropped faces, PPA's 90/10 split.
        530,  # 265 actors + 265 actresses.
        arg.arch,
        arg.defense,
        arg.runlocal,
        data=dict(preprocess='facescrub_ppa'),  # T.Resize(size): the shorter side to size.
    )
