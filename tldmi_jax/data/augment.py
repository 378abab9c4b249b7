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


# ----------------------------------------------------------------------------- color jitter

# ITU-R 601-2 luma weights of torchvision's `rgb_to_grayscale`.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision's `_blend`: `factor * image + (1 - factor) * other`, clamped to [0, 1]."""
    return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def grayscale(image: jax.Array) -> jax.Array:
    """[H, W, 3] RGB -> [H, W, 1] luma `0.299 R + 0.587 G + 0.114 B`."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    w_r, w_g, w_b = GRAY_WEIGHTS
    return (w_r * r + w_g * g + w_b * b)[..., None]


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """`image` [H, W, 3] in [0, 1] times `factor`, clamped (blend with black)."""
    return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend of `image` [H, W, 3] with its mean grey level, clamped to [0, 1]."""
    return _blend(image, jnp.mean(grayscale(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend of `image` [H, W, 3] with its grey image, clamped to [0, 1]."""
    return _blend(image, grayscale(image), factor)


def rgb_to_hsv(image: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> [..., 3] HSV in [0, 1], torchvision's `_rgb2hsv` (grey: H = 0)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    maxc = jnp.max(image, axis=-1)
    minc = jnp.min(image, axis=-1)
    grey = maxc == minc
    chroma = maxc - minc
    ones = jnp.ones_like(maxc)
    s = chroma / jnp.where(grey, ones, maxc)
    divisor = jnp.where(grey, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    hr = jnp.where(maxc == r, bc - gc, 0.0)
    hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
    hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
    h = jnp.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(image: jax.Array) -> jax.Array:
    """[..., 3] HSV in [0, 1] -> [..., 3] RGB (torchvision's `_hsv2rgb`)."""
    h, s, v = image[..., 0], image[..., 1], image[..., 2]
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    sector = jnp.mod(i.astype(jnp.int32), 6)
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    # Channel values per sector 0..5 (rows: R, G, B), picked by the sector index.
    table = jnp.stack(
        [
            jnp.stack([v, q, p, p, t, v], axis=-1),
            jnp.stack([t, v, v, q, p, p], axis=-1),
            jnp.stack([p, p, t, v, v, q], axis=-1),
        ],
        axis=-2,
    )
    return jnp.take_along_axis(table, sector[..., None, None], axis=-1)[..., 0]


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
    """`image` [H, W, 3] in [0, 1] with its hue rotated by `shift` (in turns, [-0.5, 0.5])."""
    hsv = rgb_to_hsv(image)
    hue = jnp.mod(hsv[..., 0] + shift, 1.0)
    return hsv_to_rgb(jnp.concatenate([hue[..., None], hsv[..., 1:]], axis=-1))


def _strengths(
    brightness: float, contrast: float, saturation: float, hue: float
) -> tuple[float, float, float, float]:
    """The four strengths as floats, checked as torchvision's `ColorJitter` does."""
    values = tuple(float(x) for x in (brightness, contrast, saturation, hue))
    for name, value in zip(('brightness', 'contrast', 'saturation'), values[:3], strict=True):
        if value < 0:
            raise ValueError(f'{name} must be >= 0, got {value}.')
    if not 0 <= values[3] <= 0.5:
        raise ValueError(f'hue must be in [0, 0.5], got {values[3]}.')
    return values


def jitter_params(
    key: jax.Array,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """torchvision's `ColorJitter.get_params`: the order of the four adjustments and their
    factors.

    Returns:
      `(order, factors)`: int32 [4], a permutation of 0..3 (brightness, contrast,
      saturation, hue), and float32 [4]: the brightness, contrast and saturation factors,
      each uniform in `[max(0, 1 - s), 1 + s]`, and the hue shift, uniform in `[-h, h]`.

    Raises:
      ValueError: a negative strength, or hue outside [0, 0.5].
    """
    b, c, s, h = _strengths(brightness, contrast, saturation, hue)
    k_order, k_factors = jax.random.split(key)
    order = jax.random.permutation(k_order, 4).astype(jnp.int32)
    low = jnp.array([max(0.0, 1.0 - b), max(0.0, 1.0 - c), max(0.0, 1.0 - s), -h], jnp.float32)
    high = jnp.array([1.0 + b, 1.0 + c, 1.0 + s, h], jnp.float32)
    factors = jax.random.uniform(k_factors, (4,), minval=low, maxval=high)
    return order, factors


def apply_jitter(
    image: jax.Array,
    order: jax.Array,
    factors: jax.Array,
    enabled: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> jax.Array:
    """Applies the adjustments `order` [4] with `factors` [4] (from `jitter_params`) to
    `image` [H, W, 3] in [0, 1]; a disabled adjustment (a strength of 0) is skipped."""
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    branches = [
        (lambda x, op=op, i=i: op(x, factors[i])) if on else (lambda x: x)
        for i, (op, on) in enumerate(zip(ops, enabled, strict=True))
    ]
    for position in range(4):
        image = jax.lax.switch(order[position], branches, image)
    return image


def color_jitter(
    key: jax.Array,
    image: jax.Array,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> jax.Array:
    """torchvision's `ColorJitter(brightness, contrast, saturation, hue)` of one image
    [H, W, 3] float in [0, 1] -> [H, W, 3] in [0, 1] (see the module docstring).

    Raises:
      ValueError: a negative strength, or hue outside [0, 0.5].
    """
    strengths = _strengths(brightness, contrast, saturation, hue)
    if not any(strengths):
        return image
    order, factors = jitter_params(key, *strengths)
    return apply_jitter(image, order, factors, tuple(x > 0 for x in strengths))
