"""Reruns that must not mix runs: workdir locks, stale locks, moved workdirs, changed inputs.

* Two real `launch/train.py` processes on one workdir: the second stops with one line
  naming the first's pid; the first finishes and logs every step once.
* A run SIGKILLed mid-training leaves a stale `.lock` that does not block the rerun; a copy
  (`cp -r`) of the half-finished workdir resumes elsewhere; rerunning the finished command
  adds no metrics record.
* A finished runlocal attack moved (`mv`) elsewhere resumes; after its (runlocal-made)
  target is replaced, the rerun is refused, `--config.overwrite=True` restarts it, and an
  unchanged rerun resumes.
"""

import collections
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from tests.launch import crash, in_process
from tldmi_jax.utils import checkpoint

TRAIN = 'celeba.py:runlocal'


def _error_lines(stderr: str) -> tuple[list[str], str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if line.startswith('error:')], (lines or [''])[-1]


def _records_once(workdir) -> list[dict]:
    """The records of `metrics.jsonl`, after checking each (step, keys) appears once."""
    records = crash.records(str(workdir), drop=())
    counts = collections.Counter((r['step'], frozenset(r)) for r in records)
    assert [k for k, n in counts.items() if n > 1] == []
    return records


def test_a_second_run_on_a_busy_workdir_stops_and_names_the_first(tmp_path):
    wd = tmp_path / 'wd'
    cmd = crash.command('train', TRAIN, str(wd), '--config.total_steps=40')
    with open(tmp_path / 'first.log', 'w') as log:
        first = subprocess.Popen(cmd, cwd=crash.ROOT, env=crash._env(), stdout=log, stderr=log)
    try:
        deadline = time.time() + 300
        while not (wd / '.lock').exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, 'the first run ended before it was seen running'
        first.send_signal(signal.SIGSTOP)  # Holds the lock while the second one tries.
        try:
            second = subprocess.run(
                cmd, cwd=crash.ROOT, env=crash._env(), capture_output=True, text=True, timeout=300
            )
            files = sorted(os.listdir(wd))
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=600) == 0, (tmp_path / 'first.log').read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    errors, last = _error_lines(second.stderr)
    assert second.returncode == 1, second.stderr[-3000:]
    assert (
        errors
        == [last]
        == [
            f'error: {wd} is in use by another run (pid {first.pid}); wait for it to finish or '
            'choose another --workdir'
        ]
    )
    assert 'Traceback' not in second.stderr
    assert '.lock' in files  # The second run touched nothing of the first one's.
    records = _records_once(wd)
    assert [r['step'] for r in records if 'train/loss' in r] == [10, 20, 30, 40]
    assert not (wd / '.lock').exists()  # Released when the first run ended.


def test_killed_run_stale_lock_copied_workdir_and_finished_rerun(tmp_path):
    wd, copy = tmp_path / 'wd', tmp_path / 'elsewhere' / 'copy'
    overrides = ('--config.total_steps=40', '--config.checkpoint_every_steps=10')
    cmd = crash.command('train', TRAIN, str(wd), *overrides)
    crash.kill_at_random_point(
        cmd,
        str(wd),
        lambda w: crash.latest_step(os.path.join(w, 'checkpoints')),
        test='stale-lock',
        low=10,
        high=20,
        finished=lambda w: os.path.exists(os.path.join(w, 'model_final')),
    )
    assert (wd / '.lock').exists() and not (wd / 'model_final').exists()
    shutil.copytree(wd, copy)  # `cp -r` of the half-finished run, stale lock and all.

    # The reruns run in this process (no interpreter start-up): the lock is a flock all the same.
    assert _launch('train', *cmd[2:])[0] == 0  # The killed run's lock does not block its rerun.
    assert not (wd / '.lock').exists()
    results = json.loads((wd / 'results.json').read_text())
    before = _records_once(wd)
    assert _launch('train', *cmd[2:])[0] == 0  # Finished: resumes at the end, logs nothing twice.
    assert crash.records(str(wd), drop=()) == before
    assert json.loads((wd / 'results.json').read_text()) == results

    assert _launch('train', *crash.command('train', TRAIN, str(copy), *overrides)[2:])[0] == 0
    assert json.loads((copy / 'results.json').read_text()) == results
    crash.assert_trees_equal(
        checkpoint.load_model(str(wd / 'model_final')),
        checkpoint.load_model(str(copy / 'model_final')),
    )
    assert crash.records(str(copy)) == crash.records(str(wd))


def _launch(name: str, *argv: str) -> tuple[int, str]:
    """Runs `launch/<name>.py` in this process (`cli.call`); returns (status, stderr)."""
    err, saved = io.StringIO(), sys.stderr
    sys.stderr = err
    try:
        status = in_process.call_launcher(name, argv)
    finally:
        sys.stderr = saved
    return status, err.getvalue()


def _attack(workdir, *extra: str) -> tuple[int, str]:
    config = os.path.join(crash.ROOT, 'configs', 'attack_celeba.py:runlocal')
    small = ('--config.identities.count=2', '--config.attack.steps=4')
    return _launch('attack', f'--config={config}', f'--workdir={workdir}', *small, *extra)


def _mtimes(workdir) -> dict[str, int]:
    """Modification times of what only a run that attacks (or trains) again rewrites."""
    names = ('batches/batch_000.npz', 'target/results.json')
    return {name: os.stat(os.path.join(workdir, name)).st_mtime_ns for name in names}


def test_moved_attack_resumes_and_a_replaced_target_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(crash.ROOT)
    old, new = tmp_path / 'a' / 'attack', tmp_path / 'b' / 'moved'
    status, stderr = _attack(old)
    assert status == 0, stderr[-3000:]
    summary = json.loads((old / 'attack.json').read_text())
    os.makedirs(new.parent)
    os.rename(old, new)  # `mv`: config.json names the runlocal target under the old path.

    stamps = _mtimes(new)
    status, stderr = _attack(new)
    assert status == 0, stderr[-3000:]
    assert _mtimes(new) == stamps  # Resumed: nothing trained or attacked again.
    assert json.loads((new / 'inputs.json').read_text())['workdir'] == str(new)

    # The target the run made (and reuses) is replaced by another model.
    target = checkpoint.load_model(str(new / 'target'))
    other = jax.tree.map(lambda v: np.asarray(v) + 1.0, target['params'])
    for name in ('model_best', 'model_final'):
        checkpoint.save_model(str(new / 'target' / name), other, target['batch_stats'])
    stamps = _mtimes(new)
    status, stderr = _attack(new)
    errors, last = _error_lines(stderr)
    assert status == 1 and errors == [last]
    assert f'input changed since the run started: target.checkpoint ({new / "target"})' in last
    assert '--config.overwrite=True' in last
    assert _mtimes(new) == stamps  # Refused before writing anything.

    status, stderr = _attack(new, '--config.overwrite=True')
    assert status == 0, stderr[-3000:]
    restarted = _mtimes(new)
    assert restarted['batches/batch_000.npz'] != stamps['batches/batch_000.npz']
    assert restarted['target/results.json'] == stamps['target/results.json']  # Kept.
    attacked = json.loads((new / 'attack.json').read_text())
    assert attacked['num_reconstructions'] == summary['num_reconstructions']
    status, stderr = _attack(new)  # Unchanged since: resumes.
    assert status == 0, stderr[-3000:]
    assert _mtimes(new) == restarted
