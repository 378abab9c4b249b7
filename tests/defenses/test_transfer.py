"""TL-DMI freezing: rule resolution, label trees, optimizer masking, BatchNorm policies."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import demo
from tldmi_jax import defenses, models
from tldmi_jax.defenses import transfer
from tldmi_jax.models.layers import BatchNorm
from tldmi_jax.pipelines import demo as demo_report
from tldmi_jax.train import classifier


class _Toy(nn.Module):
    """Two conv+BN blocks and a head, with the classifier interface."""

    num_classes: int = 3

    @property
    def layer_groups(self):
        return (('b0', r'b0/.*'), ('b1', r'b1/.*'), ('head', r'fc/.*'))

    @property
    def cut_points(self):
        return {'last_block': 'b1'}

    def official_frozen_groups(self, k, freeze_stem=False):
        del freeze_stem
        return ('b0', 'b1')[:k]

    @nn.compact
    def __call__(self, x, train=False):
        for name in ('b0', 'b1'):
            x = _Block(name=name)(x, train)
        feats = x.mean(axis=(1, 2))
        return feats, nn.Dense(self.num_classes, name='fc')(feats)


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(4, (3, 3), name='conv')(x)
        return nn.relu(BatchNorm(name='bn')(x, train))


def _spec(**kw):
    base = dict(
        name='tldmi',
        freeze_layers=-1,
        fine_tune_from='',
        theta_c=0.0,
        rules='',
        freeze_stem=False,
        bn_policy='update',
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


@pytest.fixture(scope='module')
def toy():
    model = _Toy()
    variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False)
    return model, variables['params'], variables['batch_stats']


def _labels(plan):
    return {'/'.join(k): v for k, v in traverse_util.flatten_dict(plan.labels).items()}


def test_official_index_uses_model_translation(toy):
    model, params, stats = toy
    plan = transfer.resolve(model, params, stats, _spec(freeze_layers=1))
    labels = _labels(plan)
    assert labels['b0/conv/kernel'] == 'frozen'
    assert labels['b0/bn/scale'] == 'frozen'
    assert labels['b1/conv/kernel'] == 'trainable'
    assert labels['fc/kernel'] == 'trainable'
    assert plan.frozen_bn == frozenset({'b0/bn'})
    assert [r.group for r in plan.table] == ['b0', 'b1', 'head']
    assert plan.trainable_params == plan.total_params - plan.table[0].params


def test_cut_point_alias_and_group_name_agree(toy):
    model, params, stats = toy
    by_alias = transfer.resolve(model, params, stats, _spec(fine_tune_from='last_block'))
    by_name = transfer.resolve(model, params, stats, _spec(fine_tune_from='b1'))
    assert _labels(by_alias) == _labels(by_name)
    assert by_alias.trainable_params == by_alias.total_params - by_alias.table[0].params


def test_theta_c_budget_takes_longest_fitting_suffix(toy):
    model, params, stats = toy
    sizes = [r.params for r in transfer.resolve(model, params, stats, _spec(name='none')).table]
    plan = transfer.resolve(model, params, stats, _spec(theta_c=sizes[1] + sizes[2]))
    assert plan.trainable_params == sizes[1] + sizes[2]
    tiny = transfer.resolve(model, params, stats, _spec(theta_c=1))
    assert tiny.trainable_params == sizes[2]  # The head is always trainable.


def test_rules_first_match_wins(toy):
    model, params, stats = toy
    plan = transfer.resolve(model, params, stats, _spec(rules=r'b0/conv/.*:frozen;.*:trainable'))
    labels = _labels(plan)
    assert labels['b0/conv/kernel'] == 'frozen'
    assert labels['b0/bn/scale'] == 'trainable'
    assert plan.frozen_bn == frozenset()


def test_no_defense_trains_everything(toy):
    model, params, stats = toy
    plan = transfer.resolve(model, params, stats, _spec(name='none'))
    assert plan.trainable_params == plan.total_params


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(rules=r'nothing/.*:frozen;.*:trainable'), 'match no parameter'),
        (dict(rules=r'b0/.*:frozen'), 'match no freeze rule'),
        (dict(rules=r'.*:sometimes'), 'trainable|frozen'),
        (dict(rules=r'([:frozen'), 'does not compile'),
        (dict(fine_tune_from='b1', freeze_layers=1), 'one freeze spec form'),
        (dict(fine_tune_from='nowhere'), 'Unknown cut point'),
        (dict(bn_policy='sometimes'), 'bn_policy'),
    ],
)
def test_bad_specs_are_clear_errors(toy, kwargs, message):
    model, params, stats = toy
    with pytest.raises(ValueError, match=message):
        transfer.resolve(model, params, stats, _spec(**kwargs))


def test_tldmi_without_official_index_is_an_error(toy):
    model, params, stats = toy
    with pytest.raises(ValueError, match='no official freeze_layers'):
        transfer.resolve(model, params, stats, _spec())


def _run_steps(toy, bn_policy, steps=3):
    model, params, stats = toy
    plan = transfer.resolve(model, params, stats, _spec(freeze_layers=1, bn_policy=bn_policy))
    base = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9))
    tx = transfer.make_optimizer(base, plan.labels)
    state = classifier.TrainState(
        step=jnp.asarray(0),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        best_val=jnp.asarray(-1.0),
        best_step=jnp.asarray(-1),
    )
    step = jax.jit(classifier.make_train_step(model, tx, plan, seed=0, flip=True))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = {
            'image': rng.uniform(size=(4, 8, 8, 3)).astype(np.float32),
            'label': rng.integers(0, 3, size=4).astype(np.int32),
        }
        state, metrics = step(state, batch)
    assert np.isfinite(float(metrics['train/loss']))
    return plan, tx, state


@pytest.mark.parametrize('bn_policy', ['update', 'freeze'])
def test_frozen_params_are_bit_identical_after_training(toy, bn_policy):
    _, params, stats = toy
    _, _, state = _run_steps(toy, bn_policy)
    chex.assert_trees_all_equal(state.params['b0'], params['b0'])
    for name in ('b1', 'fc'):
        diffs = jax.tree.map(
            lambda a, b: float(jnp.abs(a - b).max()), state.params[name], params[name]
        )
        assert all(d > 0 for d in jax.tree.leaves(diffs)), (name, diffs)
    # Trainable BN statistics always adapt; frozen ones only under the `update` policy.
    assert not np.allclose(state.batch_stats['b1']['bn']['mean'], stats['b1']['bn']['mean'])
    if bn_policy == 'freeze':
        chex.assert_trees_all_equal(state.batch_stats['b0'], stats['b0'])
    else:
        assert not np.allclose(state.batch_stats['b0']['bn']['mean'], stats['b0']['bn']['mean'])


def test_frozen_leaves_hold_no_optimizer_state(toy):
    _, params, _ = toy
    plan, tx, state = _run_steps(toy, 'update', steps=1)
    n_trainable = sum(1 for v in jax.tree.leaves(plan.labels) if v == 'trainable')
    momentum_leaves = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert len(momentum_leaves) == n_trainable
    trainable_sizes = sorted(
        int(np.size(p))
        for p, label in zip(jax.tree.leaves(params), jax.tree.leaves(plan.labels), strict=True)
        if label == 'trainable'
    )
    assert sorted(int(np.size(x)) for x in momentum_leaves) == trainable_sizes


@functools.cache
def _abstract(arch):
    """A registered model and its variable shapes (no compute, full size included)."""
    model = models.get_model(arch, 5)
    size = models.default_image_size(arch)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return model, jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _plan(arch, cut):
    model, variables = _abstract(arch)
    spec = _spec(fine_tune_from=cut)
    return transfer.resolve(model, variables['params'], variables['batch_stats'], spec)


def _aliases(arch):
    """Old cut-point names -> the new name with the same meaning (hard-coded)."""
    family = arch.removesuffix('_tiny')
    if family == 'vgg16':  # 1-based blocks.
        return {f'block{b}': f'stage{b}' for b in range(1, 6)}
    if family == 'small':  # 0-based blocks: `block2` froze two of them.
        return {f'block{i}': f'stage{i + 1}' for i in range(4 if arch == family else 2)}
    if family.startswith('resnet'):
        return {f'layer{s}': f'stage{s}' for s in range(1, 5)}
    if family.startswith('efficientnet'):
        stages = {f'features_{s}': f'stage{s}' for s in range(1, 8)}
        return {'features_0': 'stem', **stages, 'features_8': 'head_conv'}
    return {}  # IR, DenseNet and Inception models always used stage1..N.


@pytest.mark.parametrize('arch', sorted(models.ARCHS))
def test_every_stage_and_head_resolve_and_train_fewer(arch):
    model, _ = _abstract(arch)
    names = [n for n in model.cut_points if n.startswith('stage')]
    assert names == [f'stage{k}' for k in range(1, len(names) + 1)] and len(names) >= 2
    counts = [_plan(arch, name).trainable_params for name in [*names, 'head']]
    assert all(a > b > 0 for a, b in zip(counts, counts[1:], strict=False)), counts


@pytest.mark.parametrize('arch', sorted(models.ARCHS))
def test_old_names_resolve_to_the_same_plan(arch):
    assert arch.startswith(('ir', 'facenet', 'densenet', 'inception')) or _aliases(arch)
    for old, new in _aliases(arch).items():
        by_old, by_new = _plan(arch, old), _plan(arch, new)
        assert by_old.labels == by_new.labels, (old, new)
        assert by_old.trainable_params == by_new.trainable_params


@pytest.mark.parametrize('runlocal', [False, True])
def test_demo_freeze_plans_equal_the_old_names(runlocal):
    """The demo's TL-DMI targets freeze exactly what `block3`, `head` froze."""
    config = demo.get_config('runlocal' if runlocal else None)
    assert config.tldmi_depths == ['stage4', 'head']
    assert config.headline_depth == 'stage4'
    old = {'stage3': 'block2', 'stage4': 'block3', 'head': 'head'}
    targets = demo_report.sweep_config(config, '/nonexistent', None).targets
    for depth in config.tldmi_depths:
        train = targets[f'tldmi_{depth}'].train
        assert train.defense.fine_tune_from == depth
        new_plan = defenses.describe(train)
        train.defense.fine_tune_from = old[depth]
        old_plan = defenses.describe(train)
        assert new_plan.labels == old_plan.labels, depth
        assert new_plan.trainable_params == old_plan.trainable_params
        frozen = [r.group for r in new_plan.table if r.trainable == 0]
        assert (
            frozen
            == {
                'stage3': ['block0', 'block1'],
                'stage4': ['block0', 'block1', 'block2'],
                'head': ['block0', 'block1', 'block2', 'block3'],
            }[depth]
        )
