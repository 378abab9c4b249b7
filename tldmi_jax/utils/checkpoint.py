"""Checkpoints: orbax `CheckpointManager` for resumable state, plain model exports.

A *model checkpoint* is an orbax `StandardCheckpointer` directory holding
`{'params': ..., 'batch_stats': ...}`. The trainer exports `model_best/` and
`model_final/` in its workdir; converters write the same format. `load_model` accepts
either such a directory or a trainer workdir.

Resuming restores the newest *readable* step: a damaged step (a truncated file after a
crash or a bad copy) is logged, moved aside (`checkpoints/<step>.damaged`, which orbax does
not read) and skipped for the next older one. When no step is readable the run stops with
one line naming the directory, or starts afresh if the user asked for that with
`config.overwrite=True`.
"""

import inspect
import os
import re
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from tldmi_jax.utils import atomic, distributed, lock, metrics

MODEL_DIRS = ('model_best', 'model_final')
_ORBAX = f'{os.sep}orbax{os.sep}'  # In the file names of orbax's code.


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager for resumable training state under `directory`."""
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


class CheckpointError(ValueError):
    """No step of a checkpoint directory is readable; the message names it and the fix."""


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> tuple[Any, int | None]:
    """Restores the newest readable step into the structure of `target`.

    A step that fails to restore is damaged: once an older step restores, each damaged one
    is logged (naming it and the step restored instead) and moved aside to
    `<step>.damaged`, so the manager never reads it again.

    Returns:
      `(state, step)`, or `(target, None)` when there is no step (or every step was damaged
      and the run's workdir was prepared with `config.overwrite=True`: it starts afresh).

    Raises:
      CheckpointError: no step restores (without overwrite); nothing is changed.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        return target, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    directory = str(mngr.directory)
    damaged: list[tuple[int, str]] = []
    _quiet_late_read_callbacks()
    for step in steps:
        try:
            state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax/tensorstore raise many types for a damaged step.
            if isinstance(e, MemoryError) or 'RESOURCE_EXHAUSTED' in str(e):
                raise  # Out of memory says nothing about the files.
            damaged.append((step, first_line(e)))
            continue
        for bad, reason in damaged:
            logging.warning(
                'Checkpoint step %d in %s is damaged (%s); moved it to %d.damaged and resumed '
                'from step %d instead.',
                bad,
                directory,
                reason,
                bad,
                step,
            )
            _set_aside(mngr, bad)
        return state, step
    shown = ', '.join(str(s) for s, _ in damaged)
    if not lock.overwrite_requested(directory):
        raise CheckpointError(
            f'no readable checkpoint in {directory}: every step is damaged or unreadable '
            f'(steps {shown}; {damaged[0][1]}); pass --config.overwrite=True to delete them '
            'and start afresh, or restore the directory from a copy'
        )
    logging.warning(
        'overwrite=True: every checkpoint step in %s is damaged (%s); deleted them, starting '
        'afresh.',
        directory,
        shown,
    )
    for step, _ in damaged:
        shutil.rmtree(os.path.join(directory, str(step)), ignore_errors=True)
    mngr.reload()
    return target, None


def _set_aside(mngr: ocp.CheckpointManager, step: int) -> None:
    """Renames a damaged step to `<step>.damaged` (kept for inspection, never read again)."""
    path = os.path.join(str(mngr.directory), str(step))
    aside = f'{path}.damaged'
    if os.path.exists(aside):
        shutil.rmtree(aside)  # An earlier damaged copy of the same step.
    os.replace(path, aside)
    mngr.reload()


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, at most 300 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0].split('. See full TensorStore details')[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + '...'


def _quiet_late_read_callbacks() -> None:
    """Drops the noise Python prints after a failed orbax read, possibly after our error line.

    When one read of a restore fails, orbax closes its event loop while tensorstore still
    finishes the other reads on its own threads: their completion callbacks find the loop
    closed ('Event loop is closed'), and the read coroutines left suspended raise their read
    error again when they are garbage-collected. Python prints each as an 'Exception
    ignored' traceback. Nobody waits for those reads any more, so exactly these two are
    dropped; every other unraisable exception goes to the previous hook. Installed before
    each read (the callbacks can fire before the failure reaches us), once per hook chain.
    """
    previous = sys.unraisablehook
    if getattr(previous, 'drops_orbax_leftovers', False):
        return

    def hook(unraisable: Any) -> None:
        exc, obj = unraisable.exc_value, unraisable.object
        closed = isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed'
        orbax_read = inspect.iscoroutine(obj) and _ORBAX in obj.cr_code.co_filename
        if not ((closed and obj is None) or orbax_read):
            previous(unraisable)

    hook.drops_orbax_leftovers = True
    sys.unraisablehook = hook


def resume(
    workdir: str, state: Any, keep: int = 2
) -> tuple[ocp.CheckpointManager, Any, int | None]:
    """Opens `workdir/checkpoints` and restores its latest state into `state`'s structure.

    `workdir/metrics.jsonl` is trimmed to the restored step (emptied when there is no
    checkpoint: the run starts again), so a resumed run logs every step once.

    Returns:
      `(manager, state, restored_step or None)`.
    """
    mngr = manager(os.path.join(workdir, 'checkpoints'), keep)
    state, restored = restore_latest(mngr, state)
    if restored is not None:
        logging.info('Resuming %s from step %d', workdir, restored)
    metrics.truncate(workdir, -1 if restored is None else restored)
    return mngr, state, restored


def save_state(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Saves `state` at `step`, copied to host first (the caller may donate its buffers).

    In a multi-process run every process calls it (orbax writes once, from process 0); an
    array sharded over processes is gathered first.
    """
    mngr.save(step, args=ocp.args.StandardSave(jax.tree.map(np.array, distributed.to_host(state))))


def _this_process() -> ocp.StandardCheckpointer:
    """A checkpointer that reads or writes from this process alone (no cross-process sync)."""
    if not distributed.multi():
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.StandardCheckpointer(multiprocessing_options=options)


def save_tree(path: str, tree: Any) -> None:
    """Writes a pytree as an orbax checkpoint directory at `path` (blocking, new directory)."""
    ckptr = _this_process()
    ckptr.save(os.path.abspath(path), distributed.to_host(tree))
    ckptr.wait_until_finished()


def read_tree(path: str) -> Any:
    """Reads a pytree written by `save_tree` (orbax's errors propagate, without the noise of
    its reads still in flight: see `_quiet_late_read_callbacks`)."""
    _quiet_late_read_callbacks()
    return _this_process().restore(os.path.abspath(path))


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

    In a multi-process run every process calls it; process 0 writes and the others wait.
    """
    tree = distributed.to_host({'params': params, 'batch_stats': batch_stats or {}})
    if distributed.is_main():
        with atomic.replacing_dir(path) as tmp:
            save_tree(tmp, tree)
            for name, payload in (files or {}).items():
                atomic.write_json(os.path.join(tmp, name), payload)
    distributed.barrier(f'save_model:{os.path.abspath(path)}')


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
    if os.path.exists(os.path.join(model_dir, 'prior.json')):  # priors.SPEC_FILE
        raise ValueError(
            f'{model_dir} is a GAN prior (it holds prior.json), not a classifier checkpoint; '
            'give a trainer workdir or model directory (model_best, model_final)'
        )
    try:
        tree = read_tree(model_dir)
    except Exception as e:  # orbax raises several types for a non-checkpoint dir
        raise ValueError(
            f'{model_dir} is not a readable orbax model checkpoint ({first_line(e)}); '
            're-copy or retrain it'
        ) from e
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
