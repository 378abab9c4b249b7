"""End to end: launch/train.py with runlocal, killed part way and rerun, equals a clean run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from flax import traverse_util

from tldmi_jax.utils import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'celeba.py') + ':arch=vgg16,defense=tldmi,runlocal'
STEPS = 240
OVERRIDES = [f'--config.total_steps={STEPS}', '--config.checkpoint_every_steps=20']


def _cmd(workdir):
    return [
        sys.executable,
        os.path.join(ROOT, 'launch', 'train.py'),
        f'--config={CONFIG}',
        f'--workdir={workdir}',
        *OVERRIDES,
    ]


def _env():
    env = dict(os.environ)  # Compile settings: tests/conftest.py.
    return env


def _run(workdir):
    proc = subprocess.run(_cmd(workdir), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _saved_steps(workdir):
    ckpt = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(ckpt):
        return []
    return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def _kill_after_first_checkpoint(workdir):
    proc = subprocess.Popen(
        _cmd(workdir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if _saved_steps(workdir):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    return proc.returncode


def test_killed_run_resumes_to_identical_parameters(tmp_path):
    clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
    out = _run(clean)
    assert 'natural accuracy' in out
    results = json.load(open(os.path.join(clean, 'results.json')))
    assert 0.0 <= results['target/natural_acc'] <= 1.0
    assert results['steps'] == STEPS
    records = [json.loads(line) for line in open(os.path.join(clean, 'metrics.jsonl'))]
    losses = [r['train/loss'] for r in records if 'train/loss' in r]
    assert losses and all(np.isfinite(losses))
    assert os.path.isdir(os.path.join(clean, 'tensorboard'))

    rc = _kill_after_first_checkpoint(killed)
    assert rc == -signal.SIGKILL, 'the run finished before it could be killed'
    assert not os.path.isdir(os.path.join(killed, 'model_final'))
    assert max(_saved_steps(killed)) < STEPS
    _run(killed)

    a = checkpoint.load_model(os.path.join(clean, 'model_final'))
    b = checkpoint.load_model(os.path.join(killed, 'model_final'))
    flat_a = traverse_util.flatten_dict(a, sep='/')
    flat_b = traverse_util.flatten_dict(b, sep='/')
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)
    assert json.load(open(os.path.join(killed, 'results.json'))) == results
