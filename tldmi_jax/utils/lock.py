"""One process per workdir: an exclusive `flock` on `WORKDIR/.lock`, held until the process ends.

    lock.acquire(workdir)   # raises WorkdirInUseError naming the holder's pid
    ...                     # the stage runs; nested stages lock their own workdirs
    lock.release_all()      # or the process exits (atexit; the kernel drops a killed one's)

The lock file holds the holder's pid. The kernel releases an `flock` when its process dies,
so a `.lock` left by a killed run does not block the rerun: the file is there but the lock
is free. Locks are re-entrant within one process (the sweep and the demo run stages
in-process, and a rerun in a notebook or a test locks the same workdir again).

Acquiring follows the standard pattern against the unlink race: open (creating) the file,
`flock` it, then check that the path still names the locked file (a releasing holder
unlinks it before closing); if not, try again. Releasing unlinks, then closes.
"""

import atexit
import dataclasses
import errno
import fcntl
import os
import time

LOCK_NAME = '.lock'


class WorkdirInUseError(RuntimeError):
    """Another process holds the workdir's lock; the message names its pid."""


@dataclasses.dataclass
class _Held:
    fd: int
    paths: list[str]  # The lock file, under each name it was locked by (a moved workdir).
    created: list[str]  # Directories `acquire` made to hold the lock file (outermost first).


_HELD: dict[str, _Held] = {}  # Real path of a workdir -> its lock (aliases share one).
_OWNER = os.getpid()  # A forked child inherits `_HELD` but must never release its locks.
_REGISTERED = False
_OVERWRITE: set[str] = set()  # Workdirs (real paths) prepared with overwrite=True.


def held(workdir: str) -> bool:
    """True if this process holds the lock of `workdir`."""
    return os.path.realpath(workdir) in _HELD


def acquire(workdir: str) -> bool:
    """Locks `workdir` for this process, creating it if needed.

    Returns:
      True if the lock was taken now, False if this process held it already.

    Raises:
      WorkdirInUseError: another live process holds it (the message names its pid).
    """
    global _OWNER
    top = os.path.realpath(workdir)
    if top in _HELD:
        return False
    if not _HELD:
        _OWNER = os.getpid()
    created = _make_dirs(top)
    path = os.path.join(top, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            mine = _held_by_this_process(fd)
            holder = _read_pid(fd)
            os.close(fd)
            if mine is not None:  # The same directory under another name (moved, linked).
                _HELD[top] = mine
                mine.paths.append(path)
                return False
            _remove_empty(created)
            raise WorkdirInUseError(
                f'{workdir} is in use by another run (pid {holder}); wait for it to finish '
                'or choose another --workdir'
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # The holder released (unlinked) it between our open and flock: retry.
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    _HELD[top] = _Held(fd, [path], created)
    _register_atexit()
    return True


def set_overwrite(workdir: str, overwrite: bool) -> None:
    """Records whether the run in `workdir` was started with `config.overwrite=True`."""
    real = os.path.realpath(workdir)
    if overwrite:
        _OVERWRITE.add(real)
    else:
        _OVERWRITE.discard(real)


def overwrite_requested(path: str) -> bool:
    """True if the workdir holding `path` was prepared with `config.overwrite=True`.

    Lets a checkpoint reader that finds nothing readable start afresh where the user asked
    for that (the innermost prepared workdir holding `path` decides).
    """
    real = os.path.realpath(path)
    while True:
        if real in _OVERWRITE:
            return True
        if held(real):
            return False
        parent = os.path.dirname(real)
        if parent == real:
            return False
        real = parent


def release_all() -> None:
    """Releases every lock this process holds (unlink, then close).

    A workdir that `acquire` created and that is empty again afterwards is removed, so a run
    that failed before writing anything leaves no directory behind.
    """
    locks = {id(h): h for h in _HELD.values()}.values()
    _HELD.clear()
    _OVERWRITE.clear()
    if os.getpid() != _OWNER:
        return  # A forked child: the parent's locks stay.
    for h in locks:
        for path in h.paths:
            try:
                if _same_file(h.fd, path):
                    os.remove(path)
            except OSError:
                pass  # The workdir is gone (deleted by its owner): nothing to unlink.
        os.close(h.fd)
        _remove_empty(h.created)


def _register_atexit() -> None:
    global _REGISTERED
    if not _REGISTERED:
        atexit.register(release_all)
        _REGISTERED = True


def _make_dirs(path: str) -> list[str]:
    """Creates `path` and missing parents; returns the ones created, outermost first."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
            created.append(directory)
        except FileExistsError:
            pass  # Made by a concurrent run: not ours to remove.
    return created


def _remove_empty(created: list[str]) -> None:
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            return  # Not empty (the run wrote something) or already gone.


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _held_by_this_process(fd: int) -> _Held | None:
    st = os.fstat(fd)
    for h in _HELD.values():
        other = os.fstat(h.fd)
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return h
    return None


def _read_pid(fd: int) -> str:
    """The holder's pid (it writes it right after locking: wait a moment for it)."""
    for _ in range(20):
        try:
            text = os.pread(fd, 32, 0).decode(errors='replace').strip()
        except OSError:
            text = ''
        if text.isdigit():
            return text
        time.sleep(0.01)
    return 'unknown'
