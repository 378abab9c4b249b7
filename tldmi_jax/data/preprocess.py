"""Per-image preprocessing of the original code, and the random flip done on device.

``get_preprocess(name, image_size)`` maps a decoded uint8 ``[H, W, C]`` image to float32
``[image_size, image_size, C]`` in [0, 1], with no mean/std normalisation (as the original
``ToTensor`` pipeline). Crops, for images of the dataset's native size:

* celeba: the 108x108 box at top 55, left 35 of the 218x178 aligned image
  (``(218 - 108) // 2``, ``(178 - 108) // 2``), then a bilinear resize.
* ffhq: the centre 88x88 of the 128x128 thumbnail (offset 20), then resize.
* facescrub: the centre 54x54 of the 64x64 face (offset 5), then resize. The original code
  (KEDMI/TL-DMI ``dataloader.py``) assumes 64x64 input; like PPA's FaceScrub preprocessing,
  an image of another size is first resized to 64x64.
* fashion_mnist, synthetic: only a resize when the size differs; channels are kept.

The 224 px (PPA) targets and the 299 px evaluation models use Plug & Play Attacks' own
``T.Resize(image_size, antialias=True)`` instead (``RESIZES``), without the crops above.
PPA then normalises to [-1, 1] (mean = std = 0.5); here values stay in [0, 1], as for every
model of this library:

* stanford_dogs: a resize to exactly ``image_size x image_size`` (PPA's ``image_size:
  [224, 224]``; the aspect ratio is not kept), for the uncropped and the bounding-box
  cropped images alike.
* facescrub_ppa: the shorter side resized to ``image_size`` with the aspect ratio kept (PPA's
  ``image_size: 224``; the longer side ``int(image_size * long / short)``, as torchvision),
  then the centre ``image_size x image_size``. For a square face the crop is a no-op and
  this is PPA's preprocessing exactly; PPA keeps a non-square one whole (its batches then
  only stack when every image has the same shape).

An image that is not the native size is bilinearly resized to it before cropping. Resizes
use PIL ``Image.BILINEAR`` on uint8 images, which is what torchvision's ``Resize`` does with
PIL input. Horizontal flips are not done here: the trainer calls :func:`random_flip` on the
batch inside its jitted step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


class CropSpec(NamedTuple):
    """Native (height, width) of a dataset's images and the centre crop taken from it."""

    native: tuple[int, int]
    crop: tuple[int, int]


CROPS: dict[str, CropSpec | None] = {
    'celeba': CropSpec(native=(218, 178), crop=(108, 108)),
    'ffhq': CropSpec(native=(128, 128), crop=(88, 88)),
    'facescrub': CropSpec(native=(64, 64), crop=(54, 54)),
    'fashion_mnist': None,
    'synthetic': None,
}
# PPA's `T.Resize(image_size)`: 'exact' (a [size, size] list) or 'shorter_side' (an int).
RESIZES: dict[str, str] = {
    'stanford_dogs': 'exact',
    'facescrub_ppa': 'shorter_side',
}


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 [H, W, C] image to ``size = (height, width)`` with PIL."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image))
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return out[..., None] if out.ndim == 2 else out


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre ``size = (height, width)`` box: top ``(H - h) // 2``, left ``(W - w) // 2``."""
    height, width = size
    h, w = image.shape[:2]
    if h < height or w < width:
        raise ValueError(f'cannot crop {height}x{width} from a {h}x{w} image')
    top, left = (h - height) // 2, (w - width) // 2
    return image[top : top + height, left : left + width]


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's ``Resize(size)``: the shorter side to ``size``, the aspect ratio kept."""
    h, w = image.shape[:2]
    if h <= w:
        return resize(image, (size, int(size * w / h)))
    return resize(image, (int(size * h / w), size))


def _canonical_name(dataset_name: str) -> str:
    name = dataset_name.removesuffix('_mi')
    if name not in CROPS and name not in RESIZES:
        valid = ', '.join(sorted({*CROPS, *RESIZES}))
        raise ValueError(f'no preprocessing for dataset {dataset_name!r}; valid: {valid}')
    return name


def get_preprocess(dataset_name: str, image_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Returns the original code's preprocessing for a dataset.

    Args:
      dataset_name: 'celeba', 'ffhq', 'facescrub', 'fashion_mnist', 'synthetic', or PPA's
        'stanford_dogs' and 'facescrub_ppa' (a '_mi' suffix is accepted, so the names of
        ``tldmi_jax.data.DATASETS`` work; ``config.data.preprocess`` picks another one).
      image_size: output height and width (64 for targets, 112 for the evaluation model;
        224 and 299 in the PPA setting).

    Returns:
      ``fn(image: uint8 [H, W, C]) -> float32 [image_size, image_size, C]`` in [0, 1].
    """
    name = _canonical_name(dataset_name)
    spec, mode = CROPS.get(name), RESIZES.get(name)
    out = (int(image_size), int(image_size))

    def preprocess(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f'expected a uint8 [H, W, C] image, got {image.dtype} {image.shape}')
        if spec is not None:
            image = center_crop(resize(image, spec.native), spec.crop)
        elif mode == 'shorter_side':
            image = center_crop(resize_shorter_side(image, out[0]), out)
        return resize(image, out).astype(np.float32) * np.float32(1.0 / 255.0)

    return preprocess


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Flips each image left-right with probability 0.5, independently per example.

    Args:
      rng: a PRNG key.
      images: [B, H, W, C].

    Returns:
      [B, H, W, C], each example either unchanged or mirrored along W.
    """
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
