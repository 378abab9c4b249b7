"""Checkpoints: orbax `CheckpointManager` for resumable state, plain model exports.

A *model checkpoint* is an orbax `StandardCheckpointer` directory holding
`{'params': ..., 'batch_stats': ...}`. The trainer exports `model_best/` and
`model_final/` in its workdir; converters write the same format. `load_model` accepts
either such a directory or a trainer workdir.
"""

import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from tldmi_jax.utils import atomic

MODEL_DIRS = ('model_best', 'model_final')


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager for resumable training state under `directory`."""
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> tuple[Any, int | None]:
    """Restores the latest step into the structure of `target` (or returns it unchanged)."""
    step = mngr.latest_step()
    if step is None:
        return target, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract)), step


def resume(
    workdir: str, state: Any, keep: int = 2
) -> tuple[ocp.CheckpointManager, Any, int | None]:
    """Opens `workdir/checkpoints` and restores its latest state into `state`'s structure.

    `workdir/metrics.jsonl` is trimmed to the restored step (emptied when there is no
    checkpoint: the run starts again), so a resumed run logs every step once.

    Returns:
      `(manager, state, restored_step or None)`.
    """
    from tldmi_jax.utils import metrics  # Local: metrics has no need of orbax.

    mngr = manager(os.path.join(workdir, 'checkpoints'), keep)
    state, restored = restore_latest(mngr, state)
    if restored is not None:
        logging.info('Resuming %s from step %d', workdir, restored)
    metrics.truncate(workdir, -1 if restored is None else restored)
    return mngr, state, restored


def save_state(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Saves `state` at `step`, copied to host first (the caller may donate its buffers)."""
    mngr.save(step, args=ocp.args.StandardSave(jax.tree.map(np.array, state)))


def save_tree(path: str, tree: Any) -> None:
    """Writes a pytree as an orbax checkpoint directory at `path` (blocking, new directory)."""
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(path), jax.device_get(tree))
    ckptr.wait_until_finished()


def save_model(
    path: str, params: Any, batch_stats: Any, files: dict[str, Any] | None = None
) -> None:
    """Writes a model checkpoint (params and batch_stats) to `path`, replacing it.

    The new checkpoint is written beside `path` and swapped in (`atomic.replacing_dir`), so
    a kill at any moment leaves the previous model or the new one, never a half-written or
    missing directory that a rerun would trust.

    Args:
      path: the model directory.
      params: parameter tree.
      batch_stats: BatchNorm statistics tree (None or {} if the model has none).
      files: `{filename: payload}` written as JSON into the directory with the weights
        (e.g. a converter's `conversion.json`).
    """
    with atomic.replacing_dir(path) as tmp:
        save_tree(tmp, {'params': params, 'batch_stats': batch_stats or {}})
        for name, payload in (files or {}).items():
            atomic.write_json(os.path.join(tmp, name), payload)


def find_model_dir(path: str) -> str:
    """Resolves a model checkpoint directory from a model dir or a trainer workdir."""
    atomic.recover_dir(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f'Model checkpoint not found: {path}')
    for name in MODEL_DIRS:
        candidate = os.path.join(path, name)
        atomic.recover_dir(candidate)
        if os.path.isdir(candidate):
            return candidate
    return path


def load_model(path: str) -> dict[str, Any]:
    """Loads `{'params', 'batch_stats'}` from a model checkpoint or trainer workdir."""
    model_dir = find_model_dir(path)
    try:
        tree = ocp.StandardCheckpointer().restore(os.path.abspath(model_dir))
    except Exception as e:  # orbax raises several types for a non-checkpoint dir
        raise ValueError(f'{model_dir} is not a readable orbax model checkpoint: {e}') from e
    if not isinstance(tree, dict) or 'params' not in tree:
        raise ValueError(f'{model_dir} holds no "params" tree; keys: {list(tree or {})}.')
    tree.setdefault('batch_stats', {})
    return tree


def merge_params(
    loaded: Any, inited: Any, dont_load: tuple[str, ...] = (), collection: str = 'params'
) -> Any:
    """Takes every leaf of `inited` from `loaded` except those matching `dont_load`.

    Args:
      loaded: the pretrained tree (nested dicts).
      inited: the freshly initialised tree; its structure and shapes are the target.
      dont_load: regexes (full match on '/'-joined paths) of leaves kept from `inited`.
      collection: name used in error messages.

    Returns:
      A tree with the structure of `inited`.

    Raises:
      ValueError: listing every target leaf missing from `loaded`, every loaded leaf with
        no target, and every shape mismatch.
    """
    flat_l = {'/'.join(k): v for k, v in traverse_util.flatten_dict(loaded or {}).items()}
    flat_i = {'/'.join(k): v for k, v in traverse_util.flatten_dict(inited or {}).items()}
    skip = [re.compile(p) for p in dont_load]

    def skipped(name: str) -> bool:
        return any(p.fullmatch(name) for p in skip)

    missing = sorted(k for k in flat_i if k not in flat_l and not skipped(k))
    unused = sorted(k for k in flat_l if k not in flat_i and not skipped(k))
    shapes = sorted(
        f'{k}: checkpoint {np.shape(flat_l[k])} vs model {np.shape(flat_i[k])}'
        for k in flat_i
        if k in flat_l and not skipped(k) and np.shape(flat_l[k]) != np.shape(flat_i[k])
    )
    if missing or unused or shapes:
        parts = []
        if missing:
            parts.append(f'missing from checkpoint: {missing}')
        if unused:
            parts.append(f'in checkpoint but not in model: {unused}')
        if shapes:
            parts.append(f'shape mismatches: {shapes}')
        raise ValueError(f'Cannot load {collection}; ' + '; '.join(parts))
    merged = {
        tuple(k.split('/')): (
            v if skipped(k) else np.asarray(flat_l[k]).astype(np.dtype(v.dtype), copy=False)
        )
        for k, v in flat_i.items()
    }
    return traverse_util.unflatten_dict(merged)
