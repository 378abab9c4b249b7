"""launch/sweep.py: two defenses x GMI end to end, a failing cell, a kill and a resume."""

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A sweep config adding a target whose training fails (VGG k=24 splits conv4_1 from its BN).
_CONFIG = """
from configs import sweep_celeba


def get_config(arg=None):
    config = sweep_celeba.get_config('runlocal')
    config.targets.broken = dict(
        train='celeba.py:arch=vgg16,defense=tldmi,runlocal', label='broken',
        overrides={'defense': {'fine_tune_from': '', 'freeze_layers': 24}}, checkpoint='')
    return config
"""


def _cmd(config, workdir):
    return [
        sys.executable,
        os.path.join(ROOT, 'launch', 'sweep.py'),
        f'--config={config}',
        f'--workdir={workdir}',
    ]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT)  # Compile settings: tests/conftest.py.
    return env


def test_sweep_kill_resume_and_failing_cell(tmp_path):
    config = tmp_path / 'sweep_test.py'
    config.write_text(_CONFIG)
    workdir = str(tmp_path / 'sweep')
    first_cell = os.path.join(workdir, 'cells', 'none__gmi', 'cell.json')
    proc = subprocess.Popen(
        _cmd(config, workdir),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(first_cell):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the sweep finished before it could be killed'
    assert not os.path.exists(os.path.join(workdir, 'cells', 'tldmi__gmi', 'cell.json'))
    stamp = os.path.getmtime(first_cell)

    out = subprocess.run(
        _cmd(config, workdir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert '2/3 cells done' in out.stdout
    assert os.path.getmtime(first_cell) == stamp  # finished cell skipped, not recomputed
    records = {
        name: json.load(open(os.path.join(workdir, 'cells', f'{name}__gmi', 'cell.json')))
        for name in ('none', 'tldmi', 'broken')
    }
    assert records['none']['status'] == records['tldmi']['status'] == 'done'
    assert records['broken']['status'] == 'failed'
    assert 'freezes the conv of conv4_1' in records['broken']['error']
    for name in ('none', 'tldmi'):
        assert 0.0 <= records[name]['metrics']['attack/acc@1'] <= 1.0
    table = open(os.path.join(workdir, 'results.md')).read()
    assert '| broken | broken |' in table and 'failed: ValueError' in table
    assert os.path.getsize(os.path.join(workdir, 'utility_privacy.png')) > 1000
    csv_lines = open(os.path.join(workdir, 'results.csv')).read().strip().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith('target,defense,trainable_params')
