"""End to end: launch/train_gan.py with runlocal, and the run SIGKILLed at a seeded random
step and rerun, which ends with the uninterrupted run's prior."""

import json
import os
import shutil

import numpy as np
import pytest

from tests.launch import crash
from tldmi_jax import priors
from tldmi_jax.utils import metrics

CONFIG = 'gan_celeba.py:prior=gmi,runlocal'
# 30 D steps (G every 5th: 6 G steps), checkpoints every 2, samples every 6. After the kill
# point (checkpoint 8 at the latest) come 11 more checkpoints and 4 sample grids: on a fast
# machine about 0.7 s, well over the kill's 0.1 s delay (12 steps once ended in 0.2 s).
OVERRIDES = ('--config.total_steps=30', '--config.checkpoint_every_steps=2')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """`(workdir, stdout)` of one uninterrupted run."""
    workdir = str(tmp_path_factory.mktemp('gan') / 'gan')
    return workdir, crash.run_here(crash.command('train_gan', CONFIG, workdir, *OVERRIDES)).stdout


def test_train_gan_runlocal_end_to_end(reference):
    workdir, out = reference
    assert 'prior written to' in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary['steps'] == 30 and summary['g_steps'] == 6 and np.isfinite(summary['d/loss'])
    assert crash.checkpoint_steps(os.path.join(workdir, 'checkpoints')) == [28, 30]
    assert os.path.isfile(os.path.join(workdir, 'samples', 'step_6.png'))
    assert os.path.isfile(os.path.join(workdir, 'samples', 'step_30.png'))
    assert os.path.isfile(os.path.join(workdir, 'prior', 'prior.json'))
    records = metrics.read_metrics(workdir)
    assert records and all(np.isfinite(r['d/loss']) for r in records if 'd/loss' in r)
    prior = priors.load_prior(workdir)
    assert prior.kind == 'gmi' and prior.image_size == 32


def test_killed_run_resumes_to_the_same_prior(reference, tmp_path):
    clean, killed = reference[0], str(tmp_path / 'gan')
    cmd = crash.command('train_gan', CONFIG, killed, *OVERRIDES)
    crash.kill_at_random_point(
        cmd,
        killed,
        lambda w: crash.latest_step(os.path.join(w, 'checkpoints')),
        test='train_gan',
        low=2,
        high=8,
        max_delay=0.1,  # Checkpoints come about 60 ms apart: the kill can fall inside one.
        finished=lambda w: os.path.exists(os.path.join(w, 'results.json')),
    )
    assert not os.path.exists(os.path.join(killed, 'results.json'))
    crash.run_here(cmd)

    crash.assert_trees_equal(
        priors.load_prior(clean).variables, priors.load_prior(killed).variables, 'prior/'
    )
    results = crash.load_json(os.path.join(killed, 'results.json'), (killed, clean))
    assert results == crash.load_json(os.path.join(clean, 'results.json'))
    assert crash.records(killed) == crash.records(clean)
    for name in ('step_6.png', 'step_18.png', 'step_30.png'):
        crash.assert_files_equal(*(os.path.join(w, 'samples', name) for w in (clean, killed)))

    # Killed after the last checkpoint, before the prior and results.json: the rerun trains
    # no step, and its summary still holds the last logged losses.
    shutil.rmtree(os.path.join(killed, 'prior'))
    os.remove(os.path.join(killed, 'results.json'))
    crash.run_here(cmd)
    results = crash.load_json(os.path.join(killed, 'results.json'), (killed, clean))
    assert results == crash.load_json(os.path.join(clean, 'results.json'))
    assert crash.records(killed) == crash.records(clean)
