"""Feature extraction in fixed-size batches, and an on-disk cache keyed by model and data.

A *feature function* maps a float32 [B, h, w, C] batch in [0, 1] to a tuple of arrays with
leading dimension B. `resized_fn` builds one for a classifier (resized to its input size,
inference-mode BatchNorm, returning `(features, logits)`); `inception_fn` one for the FID
Inception (returning `(pool3,)`); `face_fn` one for the FaceNet of PPA's delta_face
(returning `(embedding,)`). `classifiers.run_batched` applies it to in-memory arrays
and `run_on_source` streams a dataset split through it; both pad the last batch so that one
compiled shape serves every batch, and neither holds more than a few batches of images.

Resizing is bilinear (`classifiers.resize`, antialiased), which equals PIL's
`Image.BILINEAR` on float images in both directions (tested to 1e-5). The original's
`low2high` (64 -> 112 for the evaluation model) goes through PIL on uint8 images
(`ToPILImage` truncates `x * 255` to uint8 first), so it differs from this by the uint8
quantisation only (at most 1/255 per pixel).

`FeatureCache` keeps features of private images under `workdir/feature_cache/`, keyed by a
hash of the model's variables (`classifiers.variables_hash`) and of the data split
(`pipeline.split_fingerprint`:
dataset, split, size, labels, the selected records and the preprocessing), so a rerun with
the same evaluation model and data reuses them and any change recomputes.
"""

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tldmi_jax import classifiers, config_lib
from tldmi_jax.data import pipeline
from tldmi_jax.utils import atomic, checkpoint, distributed, npz

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def resized_fn(model: nn.Module, variables: Any, image_size: int) -> FeatureFn:
    """`images [B, h, w, C] in [0, 1] -> (features, logits)`, resized to `image_size`.

    Args:
      model: a classifier returning `(features, logits)`.
      variables: `{'params', 'batch_stats'}`.
      image_size: the model's input side (e.g. 112 for the evaluation FaceNet).

    Returns:
      A jitted function returning numpy-convertible `(features [B, D], logits [B, K])`.
    """

    apply_model = classifiers.apply_fn(model)

    @jax.jit
    def apply(variables, images):
        return apply_model(variables, classifiers.resize(images, image_size))

    return lambda images: apply(variables, jnp.asarray(images, jnp.float32))


def inception_fn(
    model: nn.Module, variables: Any, *, original_range_mapping: bool = False
) -> FeatureFn:
    """`images [B, h, w, 3 or 1] in [0, 1] -> (pool3 [B, D],)`, as pytorch-fid computes them.

    The images are resized (bilinear) to the network's input side and mapped to [-1, 1]
    with `2 * x - 1`. With `original_range_mapping` they are first mapped as the original
    TL-DMI code does: `uint8((x * 0.5 + 0.5) * 255)`, which assumes inputs in [-1, 1]
    while the images are in [0, 1], so they land in [0.5, 1] (the top half of the
    detector's range). That is not standard FID; it only reproduces the original numbers.
    The resize equals pytorch-fid's `F.interpolate(bilinear)` when upsampling (64 -> 299);
    for inputs above 299 px it antialiases (as PIL) where pytorch-fid does not.

    Args:
      model: an `FIDInceptionV3`.
      variables: its `{'params', 'batch_stats'}`.
      original_range_mapping: reproduce the original's pixel-range mapping.

    Returns:
      A jitted function returning a 1-tuple of pool3 features.
    """
    size = model.IMAGE_SIZE

    @jax.jit
    def apply(variables, images):
        if original_range_mapping:
            images = jnp.floor((images * 0.5 + 0.5) * 255.0) / 255.0
        if images.shape[-1] == 1:  # Greyscale data (e.g. Fashion-MNIST): replicate.
            images = jnp.repeat(images, 3, axis=-1)
        x = classifiers.resize(images, size) * 2.0 - 1.0
        features, _ = model.apply(variables, x, train=False)
        return (features,)

    return lambda images: apply(variables, jnp.asarray(images, jnp.float32))


# `config.face_model.input_mapping`: how [0, 1] images are standardised for the face model.
FACE_INPUT_MAPPINGS = {
    # PPA feeds FaceNet the [-1, 1] tensors of its pipeline (`Normalize(0.5, 0.5)` on the
    # private images, the raw StyleGAN2 output for reconstructions).
    'ppa': lambda x: x * 2.0 - 1.0,
    # facenet-pytorch's `fixed_image_standardization`, what the VGGFace2 model was trained on.
    'fixed_standardization': lambda x: (x * 255.0 - 127.5) / 128.0,
}


def face_fn(model: nn.Module, variables: Any, *, input_mapping: str = 'ppa') -> FeatureFn:
    """`images [B, h, w, 3] in [0, 1] -> (embedding [B, D],)` of a FaceNet (InceptionResnetV1).

    The images are resized (bilinear, antialiased: torchvision's `Resize(antialias=True)`,
    which PPA uses) to the network's input side (160 px) and standardised by
    `FACE_INPUT_MAPPINGS[input_mapping]`. Both steps are affine per pixel, so their order
    does not matter.

    Args:
      model: an `InceptionResnetV1`.
      variables: its `{'params', 'batch_stats'}`.
      input_mapping: a `FACE_INPUT_MAPPINGS` key.

    Returns:
      A jitted function returning a 1-tuple of unit-norm embeddings.

    Raises:
      ValueError: for an unknown `input_mapping`.
    """
    if input_mapping not in FACE_INPUT_MAPPINGS:
        raise ValueError(
            f'config.face_model.input_mapping={input_mapping!r}: use one of '
            f'{sorted(FACE_INPUT_MAPPINGS)}.'
        )
    size, standardise = model.IMAGE_SIZE, FACE_INPUT_MAPPINGS[input_mapping]

    @jax.jit
    def apply(variables, images):
        x = standardise(classifiers.resize(images, size))
        return (model.apply(variables, x, train=False),)

    return lambda images: apply(variables, jnp.asarray(images, jnp.float32))


def run_on_source(
    fn: FeatureFn,
    source: Any,
    indices: np.ndarray,
    preprocess: pipeline.Preprocess,
    batch_size: int,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Streams the records `indices` of a split through `fn`, in order.

    Returns:
      `(outputs, labels)`: `fn`'s outputs over the records and their int32 labels.
    """
    indices = np.asarray(indices, np.int64)
    if indices.size == 0:
        raise ValueError('run_on_source needs at least one record.')
    parts, labels = [], []
    batches = pipeline.epoch_batches(
        source,
        indices,
        batch_size,
        preprocess=preprocess,
        seed=0,
        epoch=0,
        shuffle=False,
        drop_remainder=False,
    )
    for batch in batches:
        n = len(batch['label'])
        out = fn(pipeline.pad_batch(batch['image'], batch_size))
        parts.append(tuple(np.asarray(o, np.float32)[:n] for o in out))
        labels.append(batch['label'])
    outputs = tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    return outputs, np.concatenate(labels).astype(np.int32)


class FeatureCache:
    """Arrays stored as `{directory}/{kind}-{hash(key)}.npz`, with the key beside as JSON."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, kind: str, key: dict) -> str:
        return os.path.join(self.directory, f'{kind}-{config_lib.protocol_hash(key)}.npz')

    def load(self, kind: str, key: dict) -> dict[str, np.ndarray] | None:
        """The stored arrays for `key`, or None (also for an unreadable file, with a warning).

        Files are only ever renamed into place whole, so an unreadable one was damaged
        outside this code; it is recomputed rather than trusted. Never unpickles.
        """
        return npz.load_cache(self.path(kind, key), 'evaluation feature cache')

    def save(self, kind: str, key: dict, arrays: dict[str, np.ndarray]) -> str:
        """Stores `arrays` (and the key beside them as JSON) atomically; returns the path."""
        path = self.path(kind, key)
        atomic.write_json(path[: -len('.npz')] + '.json', key, sort_keys=True)
        atomic.savez(path, **arrays)
        return path

    def get_or_compute(
        self, kind: str, key: dict, compute: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Loads the arrays for `key`, or computes, stores and returns them."""
        cached = self.load(kind, key)
        if cached is not None:
            logging.info('Feature cache hit: %s', self.path(kind, key))
            return cached
        arrays = compute()
        if distributed.is_main():  # In a multi-process run every process computes them.
            logging.info('Feature cache stored: %s', self.save(kind, key, arrays))
        return arrays


def load_fixed_model(model: nn.Module, path: str) -> dict:
    """The variables of a fixed (not trained here) model from its converted checkpoint at
    `path`, checked leaf by leaf against the model's shapes (`eval_shape`, no compute).

    Returns:
      `{'params': ..., 'batch_stats': ...}`.

    Raises:
      ValueError: a missing or mis-shaped leaf (named by `checkpoint.merge_params`).
    """
    x = jax.ShapeDtypeStruct((1, model.IMAGE_SIZE, model.IMAGE_SIZE, 3), np.float32)
    shapes = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)
    tree = checkpoint.load_model(path)
    return {
        c: checkpoint.merge_params(tree[c], shapes[c], (), c) for c in ('params', 'batch_stats')
    }
