"""Atomic file writes: write to a temporary name in the same directory, then rename.

A reader (or a rerun after `kill -9`) sees either the old file or the complete new one,
never half of it. Every output file of the library goes through these helpers, and every
output directory that is not an orbax checkpoint (orbax commits by rename itself) through
`replacing_dir`.

    atomic.write_json(os.path.join(workdir, 'results.json'), final)
    atomic.savez(os.path.join(workdir, 'reconstructions.npz'), images=images)
    with atomic.open_for_write(path, newline='') as f:
        csv.writer(f).writerows(rows)
    with atomic.replacing_dir(os.path.join(workdir, 'prior')) as tmp:
        write_every_file_of_the_prior(tmp)
"""

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


def _tmp_path(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix='.tmp', dir=directory)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it to `path` if the block succeeds.

    The temporary file keeps the extension of `path` (some writers, such as `np.savez` and
    matplotlib, choose the format from it). On an exception it is removed and `path` is
    left as it was.
    """
    tmp = _tmp_path(path)
    ext = os.path.splitext(path)[1]
    if ext:
        os.replace(tmp, tmp + ext)
        tmp += ext
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def open_for_write(path: str, mode: str = 'w', **kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` whose content appears at `path` only when the block completes."""
    with replacing(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with open_for_write(path) as f:
        f.write(text)


def write_json(path: str, payload: Any, **kwargs: Any) -> None:
    """Writes `payload` as indented JSON to `path` atomically (`default=str`)."""
    kwargs.setdefault('indent', 2)
    kwargs.setdefault('default', str)
    write_text(path, json.dumps(payload, **kwargs))


def savez(path: str, **arrays: Any) -> None:
    """`np.savez(path, **arrays)` atomically; `path` should end in '.npz'."""
    with replacing(path) as tmp:
        np.savez(tmp, **arrays)


def save_image(image: Any, path: str) -> None:
    """Saves a PIL image atomically (the format comes from the extension of `path`)."""
    with replacing(path) as tmp:
        image.save(tmp)


def savefig(fig: Any, path: str, **kwargs: Any) -> None:
    """`fig.savefig(path, **kwargs)` atomically (matplotlib figure)."""
    with replacing(path) as tmp:
        fig.savefig(tmp, **kwargs)


# Directories: `path.partial` is being written (never trusted), `path.new` is complete and
# waiting to be swapped in, `path.old` is the previous version while the swap runs.
_PARTIAL, _NEW, _OLD = '.partial', '.new', '.old'


def recover_dir(path: str) -> None:
    """Finishes a directory swap that a killed `replacing_dir` left half done.

    Only the window between its two renames leaves `path` missing; then `path.new` (complete)
    or, failing that, `path.old` (the previous version) becomes `path` again. Idempotent, and
    a no-op when `path` exists.
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        return
    for candidate in (path + _NEW, path + _OLD):
        if os.path.isdir(candidate):
            os.replace(candidate, path)
            return


@contextlib.contextmanager
def replacing_dir(path: str) -> Iterator[str]:
    """Yields a fresh temporary directory path; swaps it in as `path` if the block succeeds.

    The block creates and fills the yielded directory (which does not exist yet). Readers of
    `path` see the old directory or the complete new one: after a `kill -9` at any moment,
    `recover_dir(path)` (which `replacing_dir` and the model loaders call) restores one of
    them, and a half-written directory is never at `path`.
    """
    path = os.path.abspath(path)
    recover_dir(path)
    tmp, new, old = path + _PARTIAL, path + _NEW, path + _OLD
    # A killed earlier attempt: its partial directory (and orbax's temporary one inside the
    # same name) and a committed one that `recover_dir` did not need.
    for stale in (*glob.glob(glob.escape(tmp) + '*'), new):
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, new)  # Commit: `new` is complete from here on.
        if os.path.exists(path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
