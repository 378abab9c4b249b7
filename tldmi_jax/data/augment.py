"""Random image augmentations in JAX: per image, jit- and vmap-friendly, differentiable in
the image.

`random_resized_crop` is torchvision's `RandomResizedCrop`: draw a box whose area is a
`scale` fraction of the image and whose aspect ratio (width / height) is log-uniform in
`ratio` (up to 10 tries, then torchvision's fallback: the whole image clamped to the ratio
range, centred), then resize the box to `size` x `size` with the antialiased bilinear
filter of torchvision's `resize(..., antialias=True)` (`jax.image.scale_and_translate`,
'linear'). Everything is traced (no Python branch on random values), so one compiled
program serves every draw, and the output is differentiable with respect to the image,
as PPA's attack needs.

Box sizes follow torchvision's integer arithmetic (`round(sqrt(area * aspect))`, the top
left corner drawn uniformly among integer positions); the random numbers come from
`jax.random`, so the boxes are not torchvision's for a given seed, only their distribution.

`color_jitter` is torchvision's `ColorJitter(brightness, contrast, saturation, hue)` on a
float image in [0, 1] (the tensor path of `torchvision.transforms.functional`): factors
drawn uniformly in `[max(0, 1 - s), 1 + s]` (hue: a shift in `[-h, h]`), the four
adjustments applied in a random order (a traced permutation, as torchvision's `randperm(4)`),
a strength of 0 skipping its adjustment. Brightness, contrast and saturation blend with
black, the mean grey level and the grey image (weights 0.299, 0.587, 0.114) and clamp to
[0, 1]; hue shifts H in torchvision's RGB -> HSV -> RGB. Only the random numbers differ
from torchvision's for a given seed, not their distribution.

Example::

    crop = random_resized_crop(key, image, 224, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    batch = jax.vmap(lambda k, x: random_resized_crop(k, x, 224))(keys, images)
    jittered = color_jitter(key, image, 0.2, 0.2, 0.1, 0.1)
"""

import math

import jax
import jax.numpy as jnp

ATTEMPTS = 10  # torchvision's tries before its fallback.


def crop_box(
    key: jax.Array,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> jax.Array:
    """A random box `[top, left, box_height, box_width]` (float32 of integers), as
    torchvision's `RandomResizedCrop.get_params` draws it (see the module docstring).

    Raises:
      ValueError: a range whose low end exceeds its high end, or a non-positive value.
    """
    for name, (lo, hi) in (('scale', scale), ('ratio', ratio)):
        if not 0 < lo <= hi:
            raise ValueError(f'{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}.')
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = float(height * width)
    target = area * jax.random.uniform(k_area, (ATTEMPTS,), minval=scale[0], maxval=scale[1])
    log_ratio = jax.random.uniform(
        k_ratio, (ATTEMPTS,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])
    )
    aspect = jnp.exp(log_ratio)
    w = jnp.round(jnp.sqrt(target * aspect))
    h = jnp.round(jnp.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(ok)  # The first attempt that fits (0 if none: then the fallback).
    # torchvision's fallback: the whole image, clamped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    found = jnp.any(ok)
    bh = jnp.where(found, h[first], fh)
    bw = jnp.where(found, w[first], fw)
    # randint(0, H - h + 1): uniform over the integer corners.
    top = jnp.floor(jax.random.uniform(k_top) * (height - bh + 1))
    left = jnp.floor(jax.random.uniform(k_left) * (width - bw + 1))
    top = jnp.where(found, top, (height - fh) // 2)
    left = jnp.where(found, left, (width - fw) // 2)
    return jnp.stack([top, left, bh, bw]).astype(jnp.float32)


def resized_crop(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
    """The box `[top, left, box_height, box_width]` of `image` [H, W, C] resized to
    `size` x `size` (antialiased bilinear, as torchvision's `resized_crop` with
    `antialias=True`). `box` may be traced.

    The resampling runs on the whole image, so where the antialiasing filter of a shrinking
    resize reaches past the box's edge it reads the true neighbouring pixels, where
    torchvision (crop first, then resize) renormalises over the box alone: the outermost
    output pixels may differ slightly; the inside is the same computation."""
    top, left, bh, bw = box[0], box[1], box[2], box[3]
    scale = jnp.stack([size / bh, size / bw])
    translation = jnp.stack([-top * scale[0], -left * scale[1]])
    return jax.image.scale_and_translate(
        image,
        (size, size, image.shape[-1]),
        spatial_dims=(0, 1),
        scale=scale,
        translation=translation,
        method='linear',
        antialias=True,
    )


def random_resized_crop(
    key: jax.Array,
    image: jax.Array,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> jax.Array:
    """torchvision's `RandomResizedCrop(size, scale, ratio)` of one image [H, W, C] ->
    [size, size, C] (see the module docstring)."""
    box = crop_box(key, image.shape[0], image.shape[1], tuple(scale), tuple(ratio))
    return resized_crop(image, box, size)


def random_flip(key: jax.Array, image: jax.Array, p: float = 0.5) -> jax.Array:
    """One image [H, W, C] mirrored left-right with probability `p`."""
    return jnp.where(jax.random.bernoulli(key, p), image[:, ::-1], image)
