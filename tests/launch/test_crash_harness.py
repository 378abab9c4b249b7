"""The kill harness itself (tests/launch/crash.py): a kill lands, and a run that a fast
machine finishes before the kill is retried once at the earliest point."""

import os
import sys

import pytest

from tests.launch import crash


def test_a_running_process_is_killed_at_the_drawn_point(tmp_path):
    workdir = str(tmp_path / 'run')
    cmd = [sys.executable, '-c', 'import time; time.sleep(30)']
    at = crash.kill_at_random_point(cmd, workdir, lambda w: 5, test='harness', low=2, high=4)
    assert 2 <= at <= 4  # The seeded draw; the process was killed (not left running).


def test_a_finished_run_is_retried_once_then_reported(tmp_path):
    workdir = tmp_path / 'run'
    # Writes its "last output" at once, then lingers: killed, but already finished.
    script = f'import os, time; os.makedirs({str(workdir)!r}, exist_ok=True); '
    script += f'open(os.path.join({str(workdir)!r}, "done"), "w").close(); time.sleep(30)'
    cmd = [sys.executable, '-c', script]

    def progress(w):  # Reached only once the output is there: the kill always comes late.
        return 10 if os.path.exists(os.path.join(w, 'done')) else 0

    with pytest.raises(AssertionError, match='again at progress 1 without delay'):
        crash.kill_at_random_point(
            cmd,
            str(workdir),
            progress,
            test='harness',
            low=1,
            high=3,
            finished=lambda w: os.path.exists(os.path.join(w, 'done')),
        )
    assert not workdir.exists()  # Cleared before the retry and after it.


def test_a_run_that_ends_by_itself_is_retried(tmp_path):
    cmd = [sys.executable, '-c', 'pass']
    with pytest.raises(AssertionError, match='ended before the kill'):
        crash.kill_at_random_point(
            cmd, str(tmp_path / 'run'), lambda w: 0, test='harness', low=1, high=2
        )
