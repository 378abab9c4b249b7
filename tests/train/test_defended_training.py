"""Every defense (and TL-DMI + each) trains a tiny model through the one trainer."""

import json
import math
import os

import chex
import dp_accounting
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import celeba
from tldmi_jax import classifiers, data, defenses, models
from tldmi_jax.defenses import mid, transfer
from tldmi_jax.train import classifier
from tldmi_jax.utils import checkpoint, metrics

STEPS = 3
DEFENSES = (
    'mid',
    'bido',
    'negls',
    'dpsgd',
    'tldmi+mid',
    'tldmi+bido',
    'tldmi+negls',
    'tldmi+dpsgd',
)
_BUILD_KW = ('num_classes', 'train_size', 'batch_size', 'steps_per_epoch', 'total_steps')
EXTRA_METRICS = {
    'mid': ('train/vib_kl',),
    'bido': ('train/hsic_xz', 'train/hsic_yz'),
    'negls': ('train/ls_alpha',),
    'dpsgd': ('train/dp_clipped', 'privacy/epsilon'),
}


def _config(defense):
    config = celeba.get_config(f'arch=vgg16,defense={defense},runlocal')
    config.total_steps = STEPS
    config.eval_every_steps = config.checkpoint_every_steps = STEPS
    config.log_every_steps = 1
    config.data.val_fraction = 0.0  # N = 128 exactly (DP-SGD's sampling rate 8 / 128).
    config.defense.ls_start_epoch, config.defense.ls_end_epoch = 0, 2
    return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    cache = {}

    def run(defense):
        if defense not in cache:
            workdir = str(tmp_path_factory.mktemp(defense.replace('+', '_')))
            final = classifier.train_and_evaluate(_config(defense), workdir)
            cache[defense] = (workdir, final)
        return cache[defense]

    return run


@pytest.mark.parametrize('defense', DEFENSES)
def test_trains_and_writes_results(runs, defense):
    workdir, final = runs(defense)
    assert os.path.exists(os.path.join(workdir, 'results.json'))
    records = [r for r in metrics.read_metrics(workdir) if 'train/loss' in r]
    assert [r['step'] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert math.isfinite(r['train/loss']), r
        for part in defense.split('+'):
            for name in EXTRA_METRICS.get(part, ()):
                assert math.isfinite(r[name]), (name, r)
    assert 0.0 <= final['target/natural_acc'] <= 1.0


@pytest.mark.parametrize('defense', [d for d in DEFENSES if d.startswith('tldmi+')])
def test_tldmi_combinations_keep_frozen_layers(runs, defense):
    workdir, final = runs(defense)
    config = _config(defense)
    _, init_params, _ = classifier.init_model(config, 4, 3)
    before = traverse_util.flatten_dict(init_params, sep='/')
    after = traverse_util.flatten_dict(
        checkpoint.load_model(os.path.join(workdir, 'model_final'))['params'], sep='/'
    )
    assert set(before) == set(after)
    frozen = [k for k in before if k.split('/')[0] < 'conv4_2']  # conv1_1 .. conv4_1.
    assert len(frozen) == 8 * 4 and final['params/trainable'] < final['params/total']
    for k in frozen:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    assert any(not np.array_equal(before[k], after[k]) for k in before if k not in frozen)
    if 'mid' in defense:  # The VIB head is part of the trained head.
        assert not np.array_equal(before['vib/kernel'], after['vib/kernel'])


def test_negative_smoothing_schedule_in_training(runs):
    workdir, _ = runs('negls')
    alphas = [r['train/ls_alpha'] for r in metrics.read_metrics(workdir) if 'train/loss' in r]
    # ls window [0, 2) epochs, 16 steps per epoch: all three steps are in epoch 0.
    np.testing.assert_allclose(alphas, [-0.025] * STEPS, rtol=1e-6)


@pytest.mark.parametrize('defense', ['dpsgd', 'tldmi+dpsgd'])
def test_dpsgd_reports_the_accountant_epsilon(runs, defense):
    workdir, final = runs(defense)
    n = len(data.get_source('synthetic', 'private_train', num_classes=4, image_size=32))
    assert n == 128
    spec = _config(defense).defense

    def expected(steps):
        event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                8 / n, dp_accounting.GaussianDpEvent(spec.dp_noise_multiplier)
            ),
            steps,
        )
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(event)
        return acc.get_epsilon(spec.dp_delta)

    records = [r for r in metrics.read_metrics(workdir) if 'train/loss' in r]
    for r in records:
        np.testing.assert_allclose(r['privacy/epsilon'], expected(r['step']), rtol=1e-12)
        assert r['privacy/delta'] == spec.dp_delta
    saved = json.load(open(os.path.join(workdir, 'results.json')))
    np.testing.assert_allclose(saved['privacy/epsilon'], expected(STEPS), rtol=1e-12)
    assert final['privacy/epsilon'] == saved['privacy/epsilon']


def test_load_classifier_rebuilds_mid(runs):
    workdir, _ = runs('mid')
    model, variables = classifiers.load(workdir)
    assert isinstance(model, mid.VIB)
    assert 'vib' in variables['params']
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    apply = jax.jit(model.apply)  # One program, not an eager op per layer (test time).
    features, logits = apply(variables, x)
    assert logits.shape == (2, 4) and model.k == features.shape[-1] // 2  # Read from vib/.
    assert variables['params']['fc']['kernel'].shape == (model.k, 4)
    np.testing.assert_array_equal(logits, apply(variables, x)[1])  # Deterministic.
    assert bool(np.all(np.isfinite(logits)))


def test_mid_starts_from_a_checkpoint_without_vib(runs):
    """A plain pretrained checkpoint initialises a MID model; `vib` stays freshly initialised."""
    plain_dir, _ = runs('bido')  # Same architecture, no VIB head.
    plain = checkpoint.load_model(os.path.join(plain_dir, 'model_final'))['params']
    config = _config('tldmi+mid')
    _, fresh, _ = classifier.init_model(config, 4, 3)
    config.init.checkpoint = plain_dir
    _, loaded, _ = classifier.init_model(config, 4, 3)
    flat = traverse_util.flatten_dict(loaded, sep='/')
    np.testing.assert_array_equal(flat['vib/kernel'], fresh['vib']['kernel'])
    np.testing.assert_array_equal(flat['conv1_1/conv/kernel'], plain['conv1_1']['conv']['kernel'])
    assert 'vib' not in plain


def test_parse_names():
    assert defenses.parse('tldmi+bido') == ('tldmi', 'bido')
    assert defenses.parse('') == ('none',)
    with pytest.raises(ValueError, match='valid: none, tldmi, mid, bido, negls, dpsgd'):
        defenses.parse('tldmi+foo')
    with pytest.raises(ValueError, match='cannot be combined'):
        defenses.parse('none+mid')
    with pytest.raises(ValueError, match='repeats'):
        defenses.parse('mid+mid')
    with pytest.raises(ValueError, match='bido\\+dpsgd is not supported'):
        defenses.parse('tldmi+bido+dpsgd')


@pytest.mark.parametrize('name', ['none', 'tldmi'])
@pytest.mark.parametrize('bn_policy', ['update', 'freeze'])
def test_plain_defenses_keep_the_plain_step(name, bn_policy):
    """`none`/`tldmi` get an objective of plain cross-entropy and no defense term."""
    spec = ml_collections.ConfigDict(dict(name=name, bn_policy=bn_policy))
    if name == 'tldmi':
        spec.fine_tune_from = 'stage2'
    model = models.get_model('small_tiny', 3)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    params, stats = variables['params'], variables['batch_stats']
    plan = transfer.resolve(model, params, stats, spec)
    objective = defenses.build(spec, model, params, plan, **dict.fromkeys(_BUILD_KW, 1))
    assert objective.parts == (name,) and objective.hp == {}
    images = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)
    labels = jnp.array([0, 1, 2, 0])
    rng = jax.random.key(1)

    # Frozen BatchNorms run in inference mode under `freeze` (the plan's).
    def plain(p, stats, images, labels, rng):
        with nn.intercept_methods(transfer.bn_policy_interceptor(plan) or _identity):
            (_, out), updates = model.apply(
                {'params': p, 'batch_stats': stats},
                images,
                train=True,
                rngs={'dropout': rng},
                mutable=['batch_stats'],
            )
        ce = optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
        return ce, (out, updates['batch_stats'])

    @jax.jit  # One program for the objective's step and the plain one (test time).
    def outputs(params, stats, images, labels, rng):
        got = objective.loss_and_grads(params, stats, images, labels, rng, jnp.asarray(0))
        want = jax.value_and_grad(plain, has_aux=True)(params, stats, images, labels, rng)
        return got, want

    got, reference = outputs(params, stats, images, labels, rng)
    loss, logits, new_stats, grads, extra = got
    (want, (want_logits, want_stats)), want_grads = reference
    np.testing.assert_array_equal(loss, want)
    np.testing.assert_array_equal(logits, want_logits)
    chex.assert_trees_all_equal(new_stats, want_stats)
    chex.assert_trees_all_equal(grads, want_grads)
    assert list(extra) == ['train/ce']
    np.testing.assert_array_equal(extra['train/ce'], want)


def _identity(next_fun, args, kwargs, context):
    return next_fun(*args, **kwargs)


@pytest.mark.parametrize(
    'defense, field, value, match',
    [
        ('tldmi+foo', None, None, 'Unknown defense'),
        ('bido', 'bido_measure', 'mi', 'bido_measure must be one of'),
        ('dpsgd', 'dp_clip_norm', 0.0, 'dp_clip_norm=0.0: must be a finite number > 0'),
        ('negls', 'ls_alpha', 1.5, 'ls_alpha must be < 1'),
        ('mid', 'mid_beta', -1.0, 'mid_beta=-1.0: must be a finite number >= 0'),
    ],
)
def test_bad_defense_configs(tmp_path, defense, field, value, match):
    config = _config(defense)
    if field:
        config.defense[field] = value
    with pytest.raises(ValueError, match=match):
        classifier.train_and_evaluate(config, str(tmp_path))
