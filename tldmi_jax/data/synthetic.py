"""A generated stand-in for the MI datasets: learnable, deterministic, instant, any size.

Each class is a smooth random colour template: a background colour plus a few coloured
Gaussian blobs, defined in normalised coordinates so that it looks the same at every image
size. An image of a class is its template with the blobs jittered in position and size, a
random brightness/contrast change and pixel noise. The public split draws from a separate
set of templates (other "identities") and has label -1, like a public face set.

Everything is a function of the arguments: image ``i`` of a split is drawn from
``np.random.default_rng([seed, stream, split, i])``, so it does not change when other
counts change. A tiny CNN (or a nearest-class-mean rule on raw pixels) separates the
classes well above chance.
"""

from __future__ import annotations

import functools

import numpy as np

from tldmi_jax.data import builders

SPLITS = ('private_train', 'private_test', 'public')
_PRIVATE_STREAM, _PUBLIC_STREAM = 0, 1
_SPLIT_CODE = {'private_train': 0, 'private_test': 1, 'public': 2}
_NUM_BLOBS = 4


def _template(seed: int, stream: int, index: int, channels: int) -> dict[str, np.ndarray]:
    """Draws one template: background colour and blob centres, widths and colours."""
    rng = np.random.default_rng([seed, stream, index, 7919])
    return {
        'background': rng.uniform(0.15, 0.85, size=channels),
        'centre': rng.uniform(0.15, 0.85, size=(_NUM_BLOBS, 2)),
        'width': rng.uniform(0.08, 0.22, size=_NUM_BLOBS),
        'colour': rng.uniform(-0.7, 0.7, size=(_NUM_BLOBS, channels)),
    }


def _render(
    template: dict[str, np.ndarray],
    rng: np.random.Generator,
    image_size: int,
    noise: float,
    jitter: float,
) -> np.ndarray:
    """Renders one jittered, noisy uint8 [S, S, C] image of a template."""
    grid = (np.arange(image_size) + 0.5) / image_size
    yy, xx = np.meshgrid(grid, grid, indexing='ij')
    centre = template['centre'] + rng.uniform(-jitter, jitter, size=template['centre'].shape)
    width = template['width'] * rng.uniform(0.85, 1.15, size=template['width'].shape)
    dist2 = (yy[..., None] - centre[:, 0]) ** 2 + (xx[..., None] - centre[:, 1]) ** 2
    blobs = np.exp(-dist2 / (2.0 * width**2))  # [S, S, K]
    image = template['background'] + blobs @ template['colour']
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(-0.06, 0.06)
    image = image + rng.normal(0.0, noise, size=image.shape)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _generate(
    split: str,
    seed: int,
    num_classes: int,
    image_size: int,
    channels: int,
    train_per_class: int,
    test_per_class: int,
    num_public: int,
    num_public_templates: int,
    noise: float,
    jitter: float,
) -> tuple[np.ndarray, np.ndarray]:
    if split == 'public':
        stream, num_templates = _PUBLIC_STREAM, num_public_templates
        template_ids = np.arange(num_public) % num_templates
        labels = np.full(num_public, builders.PUBLIC_LABEL, dtype=np.int64)
    else:
        per_class = train_per_class if split == 'private_train' else test_per_class
        stream, num_templates = _PRIVATE_STREAM, num_classes
        template_ids = np.repeat(np.arange(num_classes), per_class)
        labels = template_ids.astype(np.int64)
    templates = [_template(seed, stream, t, channels) for t in range(num_templates)]
    images = np.empty((len(labels), image_size, image_size, channels), dtype=np.uint8)
    for i, t in enumerate(template_ids):
        rng = np.random.default_rng([seed, stream, _SPLIT_CODE[split], i])
        images[i] = _render(templates[t], rng, image_size, noise, jitter)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def make_synthetic(
    split: str,
    *,
    seed: int = 0,
    num_classes: int = 8,
    image_size: int = 32,
    channels: int = 3,
    train_per_class: int = 32,
    test_per_class: int = 8,
    num_public: int = 128,
    num_public_templates: int | None = None,
    noise: float = 0.05,
    jitter: float = 0.04,
) -> builders.ArraySource:
    """Returns one split of the synthetic dataset as an in-memory source.

    Args:
      split: 'private_train', 'private_test' or 'public'.
      seed: everything is a deterministic function of the seed and the other arguments.
      num_classes: number of private classes (templates); labels are 0..num_classes-1.
      image_size: height and width in pixels.
      channels: 3 for colour (1 also works).
      train_per_class: private_train images per class (class-major order).
      test_per_class: private_test images per class.
      num_public: public images, label -1.
      num_public_templates: distinct public templates (default: num_classes), disjoint
        from the private ones.
      noise: std of the per-pixel Gaussian noise, in [0, 1] pixel units.
      jitter: maximum blob displacement, as a fraction of the image size.

    Returns:
      ArraySource: images uint8 [N, image_size, image_size, channels], num_classes set.
    """
    if split not in SPLITS:
        raise ValueError(f'synthetic has no split {split!r}; valid: {", ".join(SPLITS)}')
    if num_classes < 1 or image_size < 4 or channels < 1:
        raise ValueError(
            f'need num_classes >= 1, image_size >= 4, channels >= 1; got {num_classes}, '
            f'{image_size}, {channels}'
        )
    images, labels = _generate(
        split,
        int(seed),
        int(num_classes),
        int(image_size),
        int(channels),
        int(train_per_class),
        int(test_per_class),
        int(num_public),
        int(num_public_templates or num_classes),
        float(noise),
        float(jitter),
    )
    return builders.ArraySource(images, labels, num_classes=num_classes, name='synthetic')
