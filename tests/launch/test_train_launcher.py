"""launch/train.py (runlocal) SIGKILLed at a seeded random step and rerun equals a clean run."""

import json
import os

import numpy as np
import pytest

from tests.launch import crash, in_process
from tldmi_jax.utils import checkpoint, metrics

CONFIG = 'celeba.py:arch=vgg16,defense=tldmi,runlocal'
STEPS = 40
OVERRIDES = (f'--config.total_steps={STEPS}', '--config.checkpoint_every_steps=10')


def _cmd(workdir):
    return crash.command('train', CONFIG, workdir, *OVERRIDES)


def test_killed_run_resumes_to_identical_parameters(tmp_path):
    clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
    out = crash.run_here(_cmd(clean)).stdout
    assert 'natural accuracy' in out
    results = json.load(open(os.path.join(clean, 'results.json')))
    assert 0.0 <= results['target/natural_acc'] <= 1.0
    assert results['steps'] == STEPS
    losses = [r['train/loss'] for r in crash.records(clean) if 'train/loss' in r]
    assert losses and all(np.isfinite(losses))
    assert os.path.isdir(os.path.join(clean, 'tensorboard'))

    # Killed after 10..30 steps (a seeded draw), inside a step or a checkpoint write.
    crash.kill_at_random_point(
        _cmd(killed),
        killed,
        lambda w: crash.latest_step(os.path.join(w, 'checkpoints')),
        test='train',
        low=10,
        high=STEPS - 10,
    )
    assert not os.path.isdir(os.path.join(killed, 'model_final'))
    crash.run_here(_cmd(killed))

    for name in ('model_final', 'model_best'):
        crash.assert_trees_equal(
            checkpoint.load_model(os.path.join(clean, name)),
            checkpoint.load_model(os.path.join(killed, name)),
            f'{name}/',
        )
    assert json.load(open(os.path.join(killed, 'results.json'))) == results
    # Every step logged once, with the same values (throughput aside).
    assert crash.records(killed) == crash.records(clean)


def test_ppa_recipe_runlocal_in_process(tmp_path, capsys):
    """configs/stanford_dogs.py (PPA's 224 px recipe: Adam, MultiStepLR, crop + colour jitter,
    TL-DMI on layer4 + fc) on its tiny runlocal model; 2 steps per epoch, lr x0.1 at epoch 1."""
    workdir = str(tmp_path / 'dogs')
    config = os.path.join(crash.ROOT, 'configs', 'stanford_dogs.py')
    argv = [
        f'--config={config}:arch=resnet18,defense=tldmi,runlocal',
        f'--workdir={workdir}',
        '--config.total_steps=4',
        '--config.data.max_train=16',
        '--config.optim.milestones=(1,)',
        '--config.log_every_steps=2',
        '--config.checkpoint_every_steps=4',
    ]
    status = in_process.call_launcher('train', argv)
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    assert 'natural accuracy' in out
    lrs = [r['train/lr'] for r in metrics.read_metrics(workdir) if 'train/lr' in r]
    assert lrs == pytest.approx([0.01, 0.001], rel=1e-6)  # The steps before each log.
    results = json.load(open(os.path.join(workdir, 'results.json')))
    assert results['steps'] == 4 and 0 < results['params/trainable'] < results['params/total']
