"""Model zoo: classifiers returning `(features, logits)`, with named layer groups.

Every classifier is a linen module with `__call__(x, train=False)`, `layer_groups`,
`cut_points`, `official_frozen_groups(k, freeze_stem=False)` and `OFFICIAL_FREEZE_LAYERS`.
`get_model(arch, num_classes)` builds one by name.
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models import efficientnet, irse, resnet, small, vgg

ARCHS: dict[str, Callable[..., nn.Module]] = {
    'vgg16': vgg.VGG16,
    'ir152': irse.IR152,
    'facenet64': irse.FaceNet64,
    'facenet': irse.FaceNet,
    'ir50': irse.FaceNet64,
    'resnet18': resnet.ResNet18,
    'resnet152': resnet.ResNet152,
    'small': small.SmallCNN,
    'efficientnet_b0': efficientnet.EfficientNetB0,
    'efficientnet_b1': efficientnet.EfficientNetB1,
    'efficientnet_b2': efficientnet.EfficientNetB2,
    # Tiny variants with the same parameter names, for tests and `runlocal`.
    'vgg16_tiny': vgg._TinyVGG16,
    'ir152_tiny': irse._TinyIR152,
    'facenet64_tiny': irse._TinyFaceNet64,
    'facenet_tiny': irse._TinyFaceNet,
    'resnet18_tiny': resnet._TinyResNet18,
    'small_tiny': small._TinySmallCNN,
    'efficientnet_b0_tiny': efficientnet._TinyEfficientNetB0,
}

_IMAGE_SIZES = {
    'vgg16': 64,
    'ir152': 64,
    'facenet64': 64,
    'facenet': 112,
    'ir50': 64,
    'resnet18': 224,
    'resnet152': 224,
    'small': 32,
    'efficientnet_b0': 64,
    'efficientnet_b1': 64,
    'efficientnet_b2': 64,
    'vgg16_tiny': 32,
    'ir152_tiny': 16,
    'facenet64_tiny': 16,
    'facenet_tiny': 32,
    'resnet18_tiny': 32,
    'small_tiny': 16,
    'efficientnet_b0_tiny': 32,
}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f'Unknown arch {arch!r}; known: {", ".join(sorted(ARCHS))}')


def get_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds a classifier by name.

    Args:
      arch: a key of `ARCHS`.
      num_classes: number of output logits.
      **kwargs: further module attributes (e.g. `widths`).

    Returns:
      The (unbound) linen module.

    Raises:
      ValueError: for an unknown `arch`.
    """
    _check_arch(arch)
    return ARCHS[arch](num_classes=num_classes, **kwargs)


def default_image_size(arch: str) -> int:
    """Input side length (pixels) the architecture is used at.

    Raises:
      ValueError: for an unknown `arch`.
    """
    _check_arch(arch)
    return _IMAGE_SIZES[arch]


def count_params(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Number of parameters (not batch statistics), computed from shapes only.

    Args:
      model: an unbound classifier.
      image_size: input side length in pixels.
      channels: input channels.

    Returns:
      The total number of scalars in the 'params' collection.
    """
    x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables['params']))
