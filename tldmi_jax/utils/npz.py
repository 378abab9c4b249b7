"""Reading `.npz`/`.npy` files: never unpickled, and errors that name the file and the fix.

numpy's own errors for a damaged file say "BadZipFile: File is not a zip file" without the
file name, or suggest loading it "unsafely using allow_pickle=". Here a file that does not
read is named with what it was for and what to do:

    arrays = npz.load(path, 'reconstructions', fix='rerun the attack that wrote it')
    cached = npz.load_cache(path, 'feature cache')  # None (with a warning) if damaged

Caches use `load_cache`/`load_cached_array` (a damaged cache is rebuilt); real inputs use
`load`/`load_array` (a damaged one stops the run with `NpzError`).
"""

import os
import zipfile
import zlib
from typing import Any

import numpy as np
from absl import logging

_DAMAGE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class NpzError(ValueError):
    """A `.npz`/`.npy` file does not read; the message names it, what it is and the fix."""


def load(path: str, what: str, fix: str = 'restore it or rerun the stage that wrote it'):
    """All arrays of the `.npz` file `path`, read now (`{name: array}`).

    Args:
      path: the file.
      what: what the file holds, for the message ('reconstructions').
      fix: what the user should do when it does not read.

    Raises:
      FileNotFoundError: `path` does not exist.
      NpzError: the file is damaged, not an `.npz`, or holds pickled objects.
    """
    try:
        return _read(path, archive=True)
    except FileNotFoundError:
        raise
    except _DAMAGE as e:
        raise NpzError(f'{path}: cannot read the {what} ({_reason(e)}); {fix}') from None


def load_array(path: str, what: str, fix: str = 'restore it or rerun the stage that wrote it'):
    """The array of the `.npy` file `path` (see `load` for the arguments and errors)."""
    try:
        return _read(path, archive=False)
    except FileNotFoundError:
        raise
    except _DAMAGE as e:
        raise NpzError(f'{path}: cannot read the {what} ({_reason(e)}); {fix}') from None


def load_cache(path: str, what: str) -> dict[str, np.ndarray] | None:
    """The arrays of a cache `.npz`, or None if it is absent or damaged (with a warning)."""
    return _cached(path, what, archive=True)


def load_cached_array(path: str, what: str) -> np.ndarray | None:
    """The array of a cache `.npy`, or None if it is absent or damaged (with a warning)."""
    return _cached(path, what, archive=False)


def _cached(path: str, what: str, archive: bool) -> Any:
    if not os.path.exists(path):
        return None
    try:
        return _read(path, archive)
    except _DAMAGE as e:
        logging.warning('The %s %s is unreadable (%s); rebuilding it.', what, path, _reason(e))
        return None


def _read(path: str, archive: bool) -> Any:
    with open(path, 'rb') as f:
        loaded = np.load(f, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if not archive:
                    raise ValueError('an .npz archive where one .npy array was expected')
                return {k: loaded[k] for k in loaded.files}
        if archive:
            raise ValueError('a single .npy array where an .npz archive was expected')
        return loaded


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if 'pickle' in text:  # numpy: "... load it unsafely using the `allow_pickle=` keyword"
        return 'not a numpy file, or one holding Python objects, which are never unpickled'
    if isinstance(exc, zipfile.BadZipFile | zlib.error):
        return f'damaged or truncated archive: {text}'
    if isinstance(exc, EOFError):
        return 'the file is empty or truncated'
    return text or type(exc).__name__
