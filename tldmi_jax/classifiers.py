"""One way to load a trained classifier and run it in inference mode.

Every stage that reads a classifier (the attack's target and LOMMA's augmented models, the
GAN trainers' target, distillation, evaluation, Fisher analysis) loads it with `load` or
`load_block` and runs it with `apply_fn`/`bind`/`predict`:

    model, variables = classifiers.load('workdirs/target')      # trainer workdir or model dir
    apply = classifiers.jit_apply(model)                         # compiled once, reused
    features, logits = classifiers.predict(apply, variables, images, batch_size=64)
    acc = classifiers.evaluate(apply, variables, images, labels, batch_size=64)
    target = classifiers.bind(model, variables)                  # images -> (features, logits)

A classifier is a linen module whose `__call__(x, train)` returns `(features, logits)`;
inference mode uses the BatchNorm running statistics. `predict` pads the last batch so that
one compiled shape serves every batch.
"""

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from tldmi_jax import defenses, models
from tldmi_jax.data import pipeline
from tldmi_jax.utils import checkpoint

# (variables, images [B, H, W, C]) -> (features [B, F], logits [B, K]).
ApplyFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
# images [B, H, W, C] -> (features [B, F], logits [B, K]), variables bound.
BoundFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def saved_config(path: str) -> dict[str, Any]:
    """The `config.json` a trainer (or converter) wrote into `path`, or {}."""
    cfg_path = os.path.join(path, 'config.json')
    if not os.path.exists(cfg_path):
        return {}
    with open(cfg_path) as f:
        return json.load(f)


def input_size(path: str, default: int) -> int:
    """The input size a classifier was trained at (its `config.json`), else `default`."""
    return int(saved_config(path).get('data', {}).get('image_size', default))


def load(
    path: str,
    arch: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a trained classifier: a trainer workdir or a model checkpoint directory.

    Architecture, class count and input size come from the arguments or, where those are
    None, from the `config.json` a trainer writes into its workdir.

    Args:
      path: a trainer workdir (uses `model_best/`, else `model_final/`) or a model dir.
      arch: a `tldmi_jax.models.ARCHS` name.
      num_classes: number of logits.
      image_size: input size used to check the checkpoint against the architecture.

    Returns:
      `(model, variables)` with variables `{'params', 'batch_stats'}`.

    Raises:
      ValueError: if arch/num_classes are unknown, or the checkpoint does not fit the
        architecture (listing every mismatched name).
    """
    saved = saved_config(path)
    tree = checkpoint.load_model(path)
    arch = arch or saved.get('model', {}).get('arch')
    if not arch:
        raise ValueError(f'{path}: give the architecture (no config.json to read it from).')
    if not num_classes:
        num_classes = int(np.shape(_logit_bias(tree['params']))[0])
    image_size = (
        image_size or saved.get('data', {}).get('image_size') or models.default_image_size(arch)
    )
    channels = saved.get('data', {}).get('channels', 3)
    model = models.get_model(arch, num_classes, **(saved.get('model', {}).get('kwargs') or {}))
    model = defenses.wrap_for_checkpoint(model, tree['params'])  # A MID model's VIB head.
    dummy = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
    try:
        params = checkpoint.merge_params(tree['params'], shapes['params'], (), 'params')
        stats = checkpoint.merge_params(
            tree['batch_stats'], shapes.get('batch_stats', {}), (), 'batch_stats'
        )
    except ValueError as e:
        raise ValueError(
            f'{path} is not a {arch} checkpoint with {num_classes} classes: {e}'
        ) from e
    return model, {'params': params, 'batch_stats': stats}


def load_block(
    block: Any,
    *,
    fallback_arch: str | None = None,
    fallback_size: int | None = None,
    name: str = 'model',
) -> tuple[nn.Module, Any, int]:
    """Loads the classifier a config block names (`checkpoint`, `arch`, `num_classes`, ...).

    Empty fields fall back to the trainer workdir's `config.json` (when `checkpoint` is a
    workdir of `launch/train.py`), then to `fallback_arch` / `fallback_size`, then (size
    only) to the architecture's default input size.

    Args:
      block: a ConfigDict with `checkpoint` and optional `arch`, `num_classes`,
        `image_size` (''/0 mean unset).
      fallback_arch: arch used when neither the block nor config.json names one.
      fallback_size: input size used when neither names one.
      name: the block's config field (`eval_model`, `target`), for error messages.

    Returns:
      `(model, variables, image_size)`.

    Raises:
      ValueError: no architecture is known, or `block.image_size` differs from the size
        the model was trained at (its `config.json`); inputs of any size are resized to the
        model's own, so that field only matters without a `config.json`.
    """
    path = block.checkpoint
    saved = saved_config(path)
    arch = block.get('arch') or saved.get('model', {}).get('arch') or fallback_arch
    if not arch:
        raise ValueError(f'{path}: set the architecture (no config.json names it).')
    trained = saved.get('data', {}).get('image_size')
    if block.get('image_size') and trained and int(block.image_size) != int(trained):
        raise ValueError(
            f'config.{name}.image_size={block.image_size} but {path} was trained at {trained} '
            f'px; set --config.{name}.image_size=0 (images are resized to the trained size)'
        )
    size = (
        block.get('image_size')
        or saved.get('data', {}).get('image_size')
        or fallback_size
        or models.default_image_size(arch)
    )
    model, variables = load(
        path, arch=arch, num_classes=block.get('num_classes') or None, image_size=int(size)
    )
    return model, variables, int(size)


def _logit_bias(params: Any) -> Any:
    """The classifier bias (`fc/bias`, the last layer of every registered model)."""
    if 'fc' in params and 'bias' in params['fc']:
        return params['fc']['bias']
    raise ValueError('Cannot infer num_classes: no fc/bias in the checkpoint; pass num_classes.')


def apply_fn(model: nn.Module) -> ApplyFn:
    """`(variables, images) -> (features, logits)` in inference mode (pure; jit it)."""

    def apply(variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        return model.apply(variables, images, train=False)

    return apply


def jit_apply(model: nn.Module) -> ApplyFn:
    """`jax.jit(apply_fn(model))`: make it once per model and reuse it (one compile)."""
    return jax.jit(apply_fn(model))


def bind(model: nn.Module, variables: Any) -> BoundFn:
    """`images -> (features, logits)` with `variables` bound (traced inside attack losses)."""
    apply = apply_fn(model)
    return lambda images: apply(variables, images)


def resize(images: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of [B, h, w, C] to [B, size, size, C] (PIL-equal; a no-op if equal).

    `jax.image.resize(..., antialias=True)` equals PIL's `Image.BILINEAR` on float images in
    both directions (tested to 1e-5).
    """
    if images.shape[1:3] == (size, size):
        return images
    shape = (images.shape[0], size, size, images.shape[3])
    return jax.image.resize(images, shape, method='bilinear', antialias=True)


def run_batched(
    fn: Callable[[np.ndarray], Any], images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, ...]:
    """Applies `fn` (images -> array or tuple of arrays) in padded batches of `batch_size`.

    Args:
      fn: e.g. a jitted `bind(...)`; called on float32 [batch_size, H, W, C] arrays.
      images: float32 [N, H, W, C], N >= 1.
      batch_size: examples per call (the last batch is padded, so one shape compiles).

    Returns:
      `fn`'s outputs concatenated over the N images, as float32 numpy arrays (a tuple even
      when `fn` returns a single array).
    """
    images = np.asarray(images, np.float32)
    if len(images) == 0:
        raise ValueError('run_batched needs at least one image.')
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        out = fn(pipeline.pad_batch(chunk, batch_size))
        out = out if isinstance(out, tuple | list) else (out,)
        parts.append(tuple(np.asarray(o, np.float32)[: len(chunk)] for o in out))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))


def predict(
    apply: ApplyFn, variables: Any, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(features [N, F], logits [N, K])` over an array, in padded batches.

    Args:
      apply: `jit_apply(model)` (or any `ApplyFn`).
      variables: the classifier's `{'params', 'batch_stats'}`.
      images: float32 [N, H, W, C], N >= 1.
      batch_size: examples per call.
    """
    features, logits = run_batched(lambda x: apply(variables, x), images, batch_size)
    return features, logits


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy of logits [N, K] against integer labels [N] (NaN if N = 0)."""
    n = len(labels)
    if n == 0:
        return {'acc@1': float('nan'), 'acc@5': float('nan')}
    k = min(5, logits.shape[-1])
    topk = np.argsort(-logits, axis=-1)[:, :k]
    top1 = int(np.sum(topk[:, 0] == labels))
    top5 = int(np.sum(np.any(topk == labels[:, None], axis=-1)))
    return {'acc@1': top1 / n, 'acc@5': top5 / n}


def evaluate(
    apply: ApplyFn, variables: Any, images: np.ndarray, labels: np.ndarray, batch_size: int
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of a classifier on arrays (padded batches; `predict`)."""
    if len(labels) == 0:
        return accuracy(np.zeros((0, 1)), labels)
    _, logits = predict(apply, variables, images, batch_size)
    return accuracy(logits, labels)


def fingerprint(tree: Any) -> str:
    """A short hash of every array in a pytree (identifies weights, not paths).

    Recorded in `attack.json` as the target's and the prior's identity.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def variables_hash(variables: Any) -> str:
    """A short hash of every leaf's path, dtype, shape and bytes (feature-cache keys)."""
    digest = hashlib.sha256()
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
    for name in sorted(flat):
        leaf = np.ascontiguousarray(flat[name])
        digest.update(f'{name}:{leaf.dtype}:{leaf.shape};'.encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()[:16]
