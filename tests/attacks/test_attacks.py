"""Every attack end to end on tiny artefacts, the losses, and bad inputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import attack_celeba
from tldmi_jax import priors, reconstructions
from tldmi_jax.attacks import common, runner
from tldmi_jax.pipelines import runlocal


@pytest.fixture(scope='module')
def target(tmp_path_factory):
    return runlocal.tiny_classifier(str(tmp_path_factory.mktemp('target')), arch='small', steps=20)


def _run(config, workdir):
    """What launch/attack.py does: runlocal stand-ins for missing inputs, then the stage."""
    return runner.run(runlocal.fill_in('attack', config, workdir), workdir)


def _config(attack, target, **attack_fields):
    config = attack_celeba.get_config(f'attack={attack},runlocal')
    config.target.checkpoint = target
    config.attack.steps = 6
    config.checkpoint_every_steps = 3
    config.attack.update(attack_fields)
    return config


@pytest.mark.parametrize(
    'attack, per_identity',
    [('gmi', 5), ('kedmi', 5), ('gmi+lomma', 5), ('kedmi+lomma', 5), ('plgmi', 5)],
)
def test_attack_end_to_end(attack, per_identity, target, tmp_path):
    summary = _run(_config(attack, target), str(tmp_path))
    arrays, meta = reconstructions.load(str(tmp_path))
    assert meta['attack'] == attack and summary['protocol_hash'] == meta['protocol_hash']
    assert len(meta['final_losses']) == 2 and np.isfinite(meta['final_losses'][1]['loss'])
    assert arrays['images'].shape == (4 * per_identity, 32, 32, 3)
    assert 0.0 <= arrays['images'].min() and arrays['images'].max() <= 1.0
    assert sorted(set(arrays['identity'].tolist())) == [0, 1, 2, 3]
    assert arrays['seed'].max() == per_identity - 1 and arrays['batch'].max() == 1
    assert os.path.exists(tmp_path / 'grids' / 'batch_001.png')
    records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    assert all(np.isfinite(r['attack/final_loss']) for r in records)


def test_gmi_lowers_identity_loss_on_a_fixed_target(target, tmp_path):
    config = _config('gmi', target, steps=1)
    config.identities.count = 2
    _run(config, str(tmp_path / 'one'))
    config.attack.steps = 30
    config.checkpoint_every_steps = 30
    _run(config, str(tmp_path / 'many'))
    rec = lambda d: [json.loads(x) for x in open(tmp_path / d / 'metrics.jsonl')][0]  # noqa: E731
    assert rec('many')['attack/final_iden'] < rec('one')['attack/final_iden']


def test_rerun_skips_finished_batches(target, tmp_path):
    config = _config('gmi', target)
    _run(config, str(tmp_path))
    before = np.load(tmp_path / 'reconstructions.npz')['images']
    os.remove(tmp_path / 'batches' / 'batch_001.npz')  # as if killed during batch 2
    _run(config, str(tmp_path))
    np.testing.assert_array_equal(np.load(tmp_path / 'reconstructions.npz')['images'], before)


def test_same_config_and_seed_give_identical_reconstructions(target, tmp_path):
    """Determinism: KEDMI (random init and sampling) twice, bit for bit; every key derives
    from config.seed (1 vs 4 devices: tests/attacks/test_attack_sharding.py)."""
    config = _config('kedmi', target)
    first = _run(config, str(tmp_path / 'a'))
    second = _run(config, str(tmp_path / 'b'))
    a, _ = reconstructions.load(str(tmp_path / 'a'))
    b, _ = reconstructions.load(str(tmp_path / 'b'))
    for key in ('images', 'identity', 'seed', 'batch'):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    untimed = [
        [{k: v for k, v in x.items() if k != 'seconds'} for x in s['final_losses']]
        for s in (first, second)
    ]
    assert untimed[0] == untimed[1]
    assert first['protocol_hash'] == second['protocol_hash']


@pytest.mark.parametrize(
    'change, message',
    [
        (dict(name='vmi'), 'Unknown attack'),
        (dict(identities=dict(first=2, count=4)), 'outside the target classes'),
        (dict(target_arch='ir152_tiny'), 'is not a ir152_tiny checkpoint'),
        (dict(prior_kind='kedmi'), 'needs a gmi prior'),
        (dict(no_target=True), 'target.checkpoint'),
    ],
)
def test_bad_inputs_write_nothing(change, message, target, tmp_path):
    config = _config('gmi', target)
    config.runlocal = False
    prior_dir = str(tmp_path / 'prior')
    priors.save_prior(
        prior_dir,
        priors.make_prior(change.get('prior_kind', 'gmi'), num_classes=4, image_size=32, tiny=True),
    )
    config.prior.checkpoint = prior_dir
    if 'name' in change:
        config.attack.name = change['name']
    if 'identities' in change:
        config.identities.update(change['identities'])
    if 'target_arch' in change:
        config.target.arch = change['target_arch']
    if change.get('no_target'):
        config.target.checkpoint = None
    workdir = tmp_path / 'attack'
    with pytest.raises(ValueError, match=message):
        runner.run(config, str(workdir))
    assert not workdir.exists()


def test_identity_losses_by_hand():
    @jax.jit  # One program for every value below (test time).
    def outputs(logits):
        return (
            common.logit_loss(logits, 2),
            common.max_margin(logits, 2),
            common.max_margin(logits, 1),
            common.cross_entropy(logits, 2),
            common.kedmi_prior_loss(logits),
        )

    logit, margin2, margin1, ce, kedmi = outputs(jnp.array([1.0, 3.0, 2.0]))
    np.testing.assert_allclose(logit, -2.0)
    np.testing.assert_allclose(margin2, -2.0 + 3.0)
    np.testing.assert_allclose(margin1, -3.0 + 2.0)
    expected = -(2.0 - np.log(np.exp(1) + np.exp(3) + np.exp(2)))
    np.testing.assert_allclose(ce, expected, rtol=1e-6)
    lse = np.log(np.exp(1) + np.exp(3) + np.exp(2))
    np.testing.assert_allclose(kedmi, np.log1p(np.exp(lse)) - lse, rtol=1e-6)
