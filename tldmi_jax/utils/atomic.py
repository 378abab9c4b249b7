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
import re
import secrets
import shutil
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


def _tmp_path(path: str) -> str:
    """Creates an empty, unique temporary file next to `path`; returns its path.

    The file gets the mode a plain `open(path, 'w')` would give (0o666 less the umask),
    not `tempfile.mkstemp`'s 0o600, so outputs are as readable as any other file.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    while True:
        tmp = os.path.join(directory, f'.{name}.{secrets.token_hex(4)}.tmp')
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
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


# Directories: `path.partial/` is the staging area of a write in progress (never trusted),
# `path.new` is complete and waiting to be swapped in, `path.old` is the previous version
# while the swap runs. Every directory this module writes carries `OWNER_MARKER`, and only
# such directories (or empty ones, or the layouts this library wrote before the marker) are
# ever replaced or deleted: a path that holds anything else is refused, never removed.
_PARTIAL, _NEW, _OLD = '.partial', '.new', '.old'
OWNER_MARKER = '.tldmi_jax'  # In every directory `replacing_dir` writes.
_STAGING_MARKER = '.tldmi_jax_staging'  # In the staging directory `path.partial`.
_STAGED = 'out'  # The yielded directory inside the staging area.
# Directories written before the marker existed: an orbax model checkpoint
# (`checkpoint.save_model`) or a prior (`priors.save_prior`), with a converter's report.
_ORBAX_ENTRIES = frozenset(
    {
        '_CHECKPOINT_METADATA',
        '_METADATA',
        '_sharding',
        'manifest.ocdbt',
        'commit_success.txt',
        'd',
        'array_metadatas',
        'descriptor',
        'conversion.json',
    }
)
_PRIOR_ENTRIES = frozenset({'prior.json', 'variables', 'conversion.json'})
_TMP_NAME = re.compile(r'\..+\.tmp(\.\w+)?')  # `_tmp_path` names (with an extension).


class ForeignPathError(ValueError):
    """A path to be replaced holds something this library did not write; nothing changed."""


def owned(path: str) -> bool:
    """True if `path` is a directory this library wrote and nobody added to since.

    That is: its marker lists every entry it holds (an interrupted write of ours may leave
    temporary files beside them), or it is the staging area of a write, or it has a layout
    this library wrote before the marker existed.
    """
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    names = {n for n in os.listdir(path) if not _TMP_NAME.fullmatch(n)}
    if _STAGING_MARKER in names:
        return True
    if OWNER_MARKER in names:
        try:
            with open(os.path.join(path, OWNER_MARKER)) as f:
                written = set(json.load(f)['names'])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return names - {OWNER_MARKER} <= written
    orbax = {n for n in names if n not in _ORBAX_ENTRIES and not n.startswith('ocdbt.process_')}
    if '_CHECKPOINT_METADATA' in names and not orbax:
        return True
    return 'prior.json' in names and names <= _PRIOR_ENTRIES


def _mark(path: str) -> None:
    """Writes the marker of `path`, listing the entries it holds now."""
    names = sorted(n for n in os.listdir(path) if n != OWNER_MARKER)
    write_json(os.path.join(path, OWNER_MARKER), {'written_by': 'tldmi_jax', 'names': names})


def _touch(path: str) -> None:
    """Creates an empty marker file (one system call: it exists whole or not at all)."""
    with open(path, 'w'):
        pass


def _describe(path: str) -> str:
    if os.path.islink(path):
        return 'it is a symbolic link'
    if not os.path.isdir(path):
        return 'it is a file'
    names = sorted(os.listdir(path))
    shown = ', '.join(names[:5]) + (f', ... ({len(names)} entries)' if len(names) > 5 else '')
    return f'it holds files this library did not write ({shown})'


def check_replaceable(path: str) -> None:
    """Raises ForeignPathError unless `path` is absent, an empty directory or `owned`.

    Raises:
      ForeignPathError: one line naming the path and what is there.
    """
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        if not os.listdir(path) or owned(path):
            return
    raise ForeignPathError(
        f'refusing to replace {path}: {_describe(path)}; choose another output path or move '
        'it away (nothing was changed)'
    )


def delete_owned(path: str) -> None:
    """Deletes a directory this library wrote, its marker last (a killed delete repeats).

    The caller has checked ownership; a directory that lost its other entries keeps the
    marker until the end, so a rerun still recognises and finishes it.
    """
    marker = os.path.join(path, OWNER_MARKER)
    if not os.path.exists(marker) and not os.path.exists(os.path.join(path, _STAGING_MARKER)):
        _mark(path)
    for name in os.listdir(path):
        if name in (OWNER_MARKER, _STAGING_MARKER):
            continue
        entry = os.path.join(path, name)
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry)
        else:
            os.remove(entry)
    for name in (OWNER_MARKER, _STAGING_MARKER):
        if os.path.exists(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    os.rmdir(path)


def _remove_leftover(path: str) -> None:
    """Deletes a leftover of an earlier write if this library wrote it; refuses otherwise."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
        os.rmdir(path)
        return
    if not owned(path):
        raise ForeignPathError(
            f'refusing to delete {path} (the name of a temporary directory of this library): '
            f'{_describe(path)}; move it away and rerun'
        )
    delete_owned(path)


def recover_dir(path: str) -> None:
    """Finishes a directory swap that a killed `replacing_dir` left half done.

    Only the window between its two renames leaves `path` missing; then `path.new` (complete)
    or, failing that, `path.old` (the previous version) becomes `path` again, if this library
    wrote it. Idempotent, and a no-op when `path` exists.
    """
    path = os.path.abspath(path)
    if os.path.lexists(path):
        return
    for candidate in (path + _NEW, path + _OLD):
        if owned(candidate):
            os.replace(candidate, path)
            return


@contextlib.contextmanager
def replacing_dir(path: str) -> Iterator[str]:
    """Yields a fresh temporary directory path; swaps it in as `path` if the block succeeds.

    The block creates and fills the yielded directory (which does not exist yet). Readers of
    `path` see the old directory or the complete new one: after a `kill -9` at any moment,
    `recover_dir(path)` (which `replacing_dir` and the model loaders call) restores one of
    them, and a half-written directory is never at `path`. The new directory carries
    `OWNER_MARKER`.

    Raises:
      ForeignPathError: `path` (or one of its temporary names) holds something this
        library did not write, e.g. a user's files or a trainer workdir; nothing is changed.
    """
    path = os.path.abspath(path)
    recover_dir(path)
    check_replaceable(path)
    staging, new, old = path + _PARTIAL, path + _NEW, path + _OLD
    # A killed earlier attempt: its staging area, orbax's temporary directories beside a
    # staging directory of the previous layout, and a committed one `recover_dir` did not need.
    for stale in (staging, new, old):
        _remove_leftover(stale)
    for stale in glob.glob(glob.escape(staging) + '.orbax-checkpoint-tmp-*'):
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(staging)
    _touch(os.path.join(staging, _STAGING_MARKER))
    tmp = os.path.join(staging, _STAGED)
    try:
        yield tmp
        if not os.path.isdir(tmp):
            raise FileNotFoundError(f'The block of replacing_dir({path}) did not create {tmp}.')
        _mark(tmp)
        os.replace(tmp, new)  # Commit: `new` is complete from here on.
        if os.path.lexists(path):
            os.replace(path, old)
        os.replace(new, path)
        if os.path.lexists(old):
            delete_owned(old)
    finally:
        if os.path.lexists(staging):
            delete_owned(staging)
