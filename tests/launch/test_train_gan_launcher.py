"""End to end: launch/train_gan.py with runlocal writes checkpoints, samples and the prior."""

import json
import os
import subprocess
import sys

import numpy as np

from tldmi_jax import priors
from tldmi_jax.utils import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'gan_celeba.py') + ':prior=gmi,runlocal'


def _env():
    env = dict(os.environ)  # Compile settings: tests/conftest.py.
    return env


def test_train_gan_runlocal_end_to_end(tmp_path):
    workdir = str(tmp_path / 'gan')
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'launch', 'train_gan.py'),
        f'--config={CONFIG}',
        f'--workdir={workdir}',
        '--config.total_steps=4',
        '--config.checkpoint_every_steps=2',
        '--config.sample_every_steps=2',
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'prior written to' in proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary['steps'] == 4 and np.isfinite(summary['d/loss'])
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
    assert os.path.isfile(os.path.join(workdir, 'samples', 'step_2.png'))
    assert os.path.isfile(os.path.join(workdir, 'samples', 'step_4.png'))
    assert os.path.isfile(os.path.join(workdir, 'prior', 'prior.json'))
    records = metrics.read_metrics(workdir)
    assert records and all(np.isfinite(r['d/loss']) for r in records if 'd/loss' in r)
    prior = priors.load_prior(workdir)
    assert prior.kind == 'gmi' and prior.image_size == 32
