"""Deterministic, resumable batching over a random-access source.

The order of an epoch is a pure function of ``(seed, epoch)``: the indices are permuted with
``np.random.default_rng([seed, epoch])``. Batch ``b`` of an epoch is therefore always the same
examples, and a run restarted at ``(epoch, b)`` with ``start_batch=b`` sees exactly the batches
it would have seen. Images are decoded and preprocessed in a thread pool, a few batches ahead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from tldmi_jax.data.builders import Source

Preprocess = Callable[[np.ndarray], np.ndarray]


def epoch_order(indices: np.ndarray, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The record indices of one epoch, in the order they are served."""
    indices = np.asarray(indices, dtype=np.int64)
    if not shuffle:
        return indices
    return indices[np.random.default_rng([seed, epoch]).permutation(len(indices))]


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches per epoch: a partial last batch counts unless ``drop_remainder``."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


def _load(source: Source, preprocess: Preprocess, index: int) -> tuple[np.ndarray, int]:
    example = source[int(index)]
    return preprocess(example['image']), int(example['label'])


def _collate(examples: Sequence[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    images = np.stack([image for image, _ in examples]).astype(np.float32, copy=False)
    labels = np.asarray([label for _, label in examples], dtype=np.int32)
    return {'image': images, 'label': labels}


def epoch_batches(
    source: Source,
    indices: np.ndarray,
    batch_size: int,
    *,
    preprocess: Preprocess,
    seed: int,
    epoch: int,
    shuffle: bool,
    drop_remainder: bool,
    start_batch: int = 0,
    num_threads: int = 4,
    prefetch: int = 2,
    rows: slice = slice(None),
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the batches of one epoch, from batch ``start_batch`` on.

    Args:
      source: random access to records ``{'image': uint8 [H, W, C], 'label': int}``.
      indices: int [N], the records this epoch covers (e.g. a train/validation split).
      batch_size: examples per batch.
      preprocess: ``uint8 [H, W, C] -> float32 [h, w, c]``, e.g. from ``get_preprocess``.
      seed: the run's data seed.
      epoch: the epoch number; with ``seed`` it fixes the order.
      shuffle: permute ``indices`` with ``np.random.default_rng([seed, epoch])``; else keep
        their order.
      drop_remainder: skip a last partial batch.
      start_batch: first batch to yield, for resuming mid-epoch.
      num_threads: loader threads; 0 loads in the calling thread.
      prefetch: batches loaded ahead of the one being consumed.
      rows: the rows of every batch to load (a process of a multi-host run loads only its
        share, `utils.distributed.process_rows`); the batches are cut before slicing.

    Yields:
      ``{'image': float32 [B, h, w, c], 'label': int32 [B]}``.
    """
    order = epoch_order(indices, seed=seed, epoch=epoch, shuffle=shuffle)
    total = num_batches(len(order), batch_size, drop_remainder)
    if not 0 <= start_batch <= total:
        raise ValueError(f'start_batch {start_batch} is outside 0..{total}')
    batches = (
        order[b * batch_size : (b + 1) * batch_size][rows] for b in range(start_batch, total)
    )

    if num_threads <= 0:
        for batch in batches:
            yield _collate([_load(source, preprocess, i) for i in batch])
        return

    pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix='tldmi-data')
    pending: collections.deque[list[concurrent.futures.Future]] = collections.deque()
    try:
        for batch in batches:
            pending.append([pool.submit(_load, source, preprocess, i) for i in batch])
            if len(pending) > prefetch:
                yield _collate([f.result() for f in pending.popleft()])
        while pending:
            yield _collate([f.result() for f in pending.popleft()])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def load_all(
    source: Source, indices: np.ndarray, preprocess: Preprocess, *, num_threads: int = 4
) -> dict[str, np.ndarray]:
    """Loads and preprocesses the given records in order, for small evaluation sets.

    Returns:
      ``{'image': float32 [N, h, w, c], 'label': int32 [N]}``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError('load_all needs at least one index')
    if num_threads <= 0:
        return _collate([_load(source, preprocess, i) for i in indices])
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        return _collate(list(pool.map(lambda i: _load(source, preprocess, i), indices)))


def pad_batch(array: np.ndarray, batch_size: int) -> np.ndarray:
    """`array` [n, ...] with zeros appended along axis 0 up to `batch_size` rows.

    The last, short batch of an inference pass keeps the compiled batch shape; callers
    keep the first n outputs.
    """
    real = len(array)
    if real >= batch_size:
        return array
    return np.concatenate([array, np.zeros((batch_size - real, *array.shape[1:]), array.dtype)])


def split_validation(
    num_records: int,
    fraction: float,
    seed: int,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically carves a validation set out of ``range(num_records)``.

    Without labels, ``round(fraction * num_records)`` indices of a
    ``np.random.default_rng(seed)`` permutation go to validation. With labels (int [N]) the
    split is stratified: each class gives ``round(fraction * count)`` of its records, but
    always keeps at least one for training.

    Returns:
      ``(train_idx, val_idx)``: disjoint, sorted int64 arrays covering ``range(num_records)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f'fraction must be in [0, 1), got {fraction}')
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(num_records)
        val = perm[: int(round(fraction * num_records))]
    else:
        labels = np.asarray(labels)
        if labels.shape != (num_records,):
            raise ValueError(f'labels has shape {labels.shape}, expected ({num_records},)')
        parts = []
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            take = min(int(round(fraction * len(members))), len(members) - 1)
            parts.append(members[:take])
        val = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    is_val = np.zeros(num_records, dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def array_hash(array: np.ndarray) -> str:
    """A short hash of an array's dtype, shape and contents."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f'{array.dtype}:{array.shape};'.encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def split_fingerprint(name: str, split: str, source: Any, kwargs: dict | None = None) -> dict:
    """Identifies a dataset split by name, options, size and labels (no image decoding)."""
    return {
        'dataset': name,
        'split': split,
        'kwargs': dict(kwargs or {}),
        'size': len(source),
        'labels': array_hash(np.asarray(source.labels, np.int64)),
    }
