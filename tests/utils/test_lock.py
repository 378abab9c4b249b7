"""Workdir locks: one process per workdir, re-entrant in one process, stale locks ignored.

Two real launchers on one workdir: tests/launch/test_hardening.py.
"""

import os
import signal
import subprocess
import sys

import pytest

from tldmi_jax.utils import lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Takes the lock of argv[1], says so, and holds it until killed.
_HOLDER = """
import sys, time
from tldmi_jax.utils import lock
lock.acquire(sys.argv[1])
print('locked', flush=True)
time.sleep(600)
"""


@pytest.fixture(autouse=True)
def _release():
    yield
    lock.release_all()


def _holder(workdir) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, '-c', _HOLDER, str(workdir)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == 'locked'
    return proc


def test_lock_file_holds_the_pid_and_is_reentrant(tmp_path):
    workdir = tmp_path / 'wd'
    workdir.mkdir()
    assert lock.acquire(str(workdir)) is True
    assert (workdir / '.lock').read_text() == f'{os.getpid()}\n'
    assert lock.acquire(str(workdir)) is False  # The same process: re-entrant.
    assert lock.acquire(str(tmp_path / '.' / 'wd')) is False  # Another spelling.
    assert lock.held(str(workdir))
    lock.release_all()
    assert not lock.held(str(workdir))
    assert os.listdir(workdir) == []  # Unlinked; the directory was there before: kept.


def test_a_directory_made_for_the_lock_is_removed_when_left_empty(tmp_path):
    lock.acquire(str(tmp_path / 'a' / 'b' / 'wd'))
    assert (tmp_path / 'a' / 'b' / 'wd' / '.lock').exists()
    lock.release_all()
    assert os.listdir(tmp_path) == []  # The parents it made go too.
    lock.acquire(str(tmp_path / 'wd'))
    (tmp_path / 'wd' / 'config.json').write_text('{}')
    lock.release_all()
    assert os.listdir(tmp_path / 'wd') == ['config.json']  # Written to: kept.


def test_another_live_process_is_refused_with_its_pid(tmp_path):
    workdir = tmp_path / 'wd'
    holder = _holder(workdir)
    try:
        with pytest.raises(lock.WorkdirInUseError) as err:
            lock.acquire(str(workdir))
        assert str(err.value) == (
            f'{workdir} is in use by another run (pid {holder.pid}); wait for it to finish '
            'or choose another --workdir'
        )
        assert not lock.held(str(workdir))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder was killed: its lock file is still there, but the kernel freed the lock.
    assert (workdir / '.lock').read_text() == f'{holder.pid}\n'
    assert lock.acquire(str(workdir)) is True
    assert (workdir / '.lock').read_text() == f'{os.getpid()}\n'


def test_a_moved_workdir_is_still_ours(tmp_path):
    lock.acquire(str(tmp_path / 'old'))
    (tmp_path / 'old' / 'config.json').write_text('{}')
    os.rename(tmp_path / 'old', tmp_path / 'new')
    assert lock.acquire(str(tmp_path / 'new')) is False  # The same locked file.
    lock.release_all()
    assert os.listdir(tmp_path / 'new') == ['config.json']


def test_a_release_never_unlinks_another_process_lock(tmp_path):
    workdir = tmp_path / 'wd'
    lock.acquire(str(workdir))
    os.remove(workdir / '.lock')  # Someone deleted our lock file ...
    holder = _holder(workdir)  # ... and another run locked a new one.
    try:
        lock.release_all()
        assert (workdir / '.lock').read_text() == f'{holder.pid}\n'
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
