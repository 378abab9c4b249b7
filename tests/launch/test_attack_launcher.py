"""launch/attack.py killed part way (SIGKILL) and rerun ends with the clean run's output."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from tldmi_jax.train import classifier

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'attack_celeba.py') + ':attack=kedmi,runlocal'


def _cmd(workdir, target):
    return [
        sys.executable,
        os.path.join(ROOT, 'launch', 'attack.py'),
        f'--config={CONFIG}',
        f'--workdir={workdir}',
        f'--config.target.checkpoint={target}',
        '--config.attack.steps=100',
        '--config.checkpoint_every_steps=5',
    ]


def _env():
    env = dict(os.environ)  # Compile settings: tests/conftest.py.
    return env


def _run(workdir, target):
    proc = subprocess.run(
        _cmd(workdir, target), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_killed_attack_resumes_to_identical_reconstructions(tmp_path):
    target = classifier.runlocal_target(str(tmp_path / 'target'), arch='small', steps=10)
    clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
    summary = json.loads(_run(clean, target).strip().splitlines()[-1])
    assert summary['attack'] == 'kedmi' and summary['num_reconstructions'] == 20

    proc = subprocess.Popen(
        _cmd(killed, target), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = os.path.join(killed, 'checkpoints', 'batch_000')
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt)):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the attack finished before it could be killed'
    assert not os.path.exists(os.path.join(killed, 'reconstructions.npz'))
    _run(killed, target)

    a = np.load(os.path.join(clean, 'reconstructions.npz'))
    b = np.load(os.path.join(killed, 'reconstructions.npz'))
    for key in ('images', 'identity', 'seed', 'batch'):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
