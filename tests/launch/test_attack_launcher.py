"""launch/attack.py SIGKILLed at a seeded random step and rerun ends with the clean output."""

import glob
import json
import os

from tests.launch import crash
from tldmi_jax import priors
from tldmi_jax.pipelines import runlocal

CONFIG = 'attack_celeba.py:attack=kedmi,runlocal'
STEPS = 20  # Per identity batch; two batches.


def _cmd(workdir, target):
    return crash.command(
        'attack',
        CONFIG,
        workdir,
        f'--config.target.checkpoint={target}',
        f'--config.attack.steps={STEPS}',
        '--config.checkpoint_every_steps=5',
    )


def _steps_done(workdir):
    """Latent-search steps finished over both identity batches (0..2 * STEPS)."""
    done = 0
    for index in range(2):
        if os.path.exists(os.path.join(workdir, 'batches', f'batch_{index:03d}.npz')):
            done += STEPS
        else:
            done += crash.latest_step(os.path.join(workdir, 'checkpoints', f'batch_{index:03d}'))
    return done


def _attack_json(workdir, clean):
    meta = crash.load_json(os.path.join(workdir, 'attack.json'), (workdir, clean))
    for key in ('wall_seconds_this_run', 'iterations_per_second'):
        meta.pop(key)
    for losses in meta['final_losses']:
        losses.pop('seconds')
    return meta


def test_killed_attack_resumes_to_identical_reconstructions(tmp_path):
    target = runlocal.tiny_classifier(str(tmp_path / 'target'), arch='small', steps=10)
    clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
    summary = json.loads(crash.run_here(_cmd(clean, target)).stdout.strip().splitlines()[-1])
    assert summary['attack'] == 'kedmi' and summary['num_reconstructions'] == 20

    crash.kill_at_random_point(
        _cmd(killed, target),
        killed,
        _steps_done,
        test='attack',
        low=5,
        high=2 * STEPS - 10,
        finished=_reconstructed,
    )
    assert not os.path.exists(os.path.join(killed, 'reconstructions.npz'))
    crash.run_here(_cmd(killed, target))

    crash.assert_npz_equal(
        os.path.join(clean, 'reconstructions.npz'), os.path.join(killed, 'reconstructions.npz')
    )
    for index in range(2):
        name = os.path.join('grids', f'batch_{index:03d}.png')
        crash.assert_files_equal(os.path.join(clean, name), os.path.join(killed, name))
    assert _attack_json(killed, clean) == _attack_json(clean, clean)
    assert crash.records(killed) == crash.records(clean)


PPA_STEPS = 6  # Per chunk of 3 seeds; two chunks per identity batch, two batches.


def _ppa_cmd(workdir, target, prior):
    return crash.command(
        'attack',
        'attack_ppa.py:runlocal',
        workdir,
        f'--config.target.checkpoint={target}',
        f'--config.prior.checkpoint={prior}',
    )


def _reconstructed(workdir):
    """Whether the attack wrote its last output."""
    return os.path.exists(os.path.join(workdir, 'reconstructions.npz'))


def _ppa_steps_done(workdir):
    """Steps finished over every (identity batch, chunk of seeds): 0..4 * PPA_STEPS."""
    done = 0
    for index in range(2):
        if os.path.exists(os.path.join(workdir, 'batches', f'batch_{index:03d}.npz')):
            done += 2 * PPA_STEPS
            continue
        batch = os.path.join(workdir, 'checkpoints', f'batch_{index:03d}')
        # The two chunks of seeds (seed_chunk 3): seeds_00000-00002 and the rest.
        for chunk in glob.glob(os.path.join(batch, 'seeds_*')):
            done += crash.latest_step(chunk)
    return done


def test_killed_ppa_attack_resumes_to_identical_reconstructions(tmp_path):
    target = runlocal.tiny_classifier(str(tmp_path / 'target'), arch='small', steps=10)
    prior = str(tmp_path / 'prior')
    priors.save_prior(prior, priors.make_prior('stylegan2', image_size=32, tiny=True))
    clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
    summary = json.loads(
        crash.run_here(_ppa_cmd(clean, target, prior)).stdout.strip().splitlines()[-1]
    )
    assert summary['attack'] == 'ppa' and summary['num_reconstructions'] == 8

    crash.kill_at_random_point(
        _ppa_cmd(killed, target, prior),
        killed,
        _ppa_steps_done,
        test='ppa',
        low=2,
        high=20,
        finished=_reconstructed,
    )
    assert not os.path.exists(os.path.join(killed, 'reconstructions.npz'))
    crash.run_here(_ppa_cmd(killed, target, prior))
    crash.assert_npz_equal(
        os.path.join(clean, 'reconstructions.npz'), os.path.join(killed, 'reconstructions.npz')
    )
    assert _attack_json(killed, clean) == _attack_json(clean, clean)
    assert crash.records(killed) == crash.records(clean)
