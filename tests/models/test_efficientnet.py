"""EfficientNet-B0/B1/B2 (torchvision layout, LOMMA head): sizes, names, groups, forward.

Full-size models only go through `jax.eval_shape`; only the tiny variant is run.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from tldmi_jax import models
from tldmi_jax.models import efficientnet, layers

NUM_CLASSES = 5


def _shapes(model, size: int = 64) -> dict:
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep='/')


# torchvision's `num_params` of efficientnet_b{0,1,2} (1000 ImageNet classes).
@pytest.mark.parametrize(
    'arch, expected',
    [
        ('efficientnet_b0', 5_288_548),
        ('efficientnet_b1', 7_794_184),
        ('efficientnet_b2', 9_109_994),
    ],
)
def test_param_counts_match_torchvision(arch, expected):
    count = models.count_params(models.get_model(arch, 1000), 64)
    assert count == pytest.approx(expected, rel=1e-3)
    assert count == expected


@pytest.mark.parametrize(
    'arch, feat_dim, depths',
    [
        ('efficientnet_b0', 1280, (1, 2, 2, 3, 3, 4, 1)),
        ('efficientnet_b1', 1280, (2, 3, 3, 4, 4, 5, 2)),
        ('efficientnet_b2', 1408, (2, 3, 3, 4, 4, 5, 2)),
    ],
)
def test_full_size_shapes_at_64px(arch, feat_dim, depths):
    model = models.get_model(arch, NUM_CLASSES)
    assert models.default_image_size(arch) == 64
    assert model.depths == depths
    assert model.feat_dim == feat_dim
    variables = _shapes(model)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    features, logits = jax.eval_shape(model.apply, variables, x)
    assert features.shape == (2, feat_dim)
    assert logits.shape == (2, NUM_CLASSES)
    top = {p.split('/')[0] for p in _flat(variables['params'])}
    blocks = {f'features_{s}_{j}' for s, d in enumerate(depths, start=1) for j in range(d)}
    assert top == {'features_0', *blocks, 'features_8', 'fc'}


def test_make_divisible_is_torchvision_rounding():
    # B2 (width 1.1) stage widths, and the rounding corner cases.
    widths = [efficientnet.make_divisible(c * 1.1) for c in (32, 16, 24, 40, 80, 112, 192, 320)]
    assert widths == [32, 16, 24, 48, 88, 120, 208, 352]
    assert efficientnet.make_divisible(10) == 16  # 8 would lose more than 10%.
    assert efficientnet.make_divisible(3) == 8


def test_parameter_names_map_onto_torchvision_keys():
    """Shapes of a few leaves whose torchvision keys a converter maps by name."""
    flat = _flat(_shapes(models.get_model('efficientnet_b0', 1000))['params'])
    expected = {
        'features_0/conv/kernel': (3, 3, 3, 32),  # features.0.0.weight
        'features_0/bn/scale': (32,),  # features.0.1.weight
        'features_1_0/block_0/conv/kernel': (3, 3, 1, 32),  # depthwise, no expansion
        'features_1_0/block_1/fc1/kernel': (1, 1, 32, 8),  # SE squeeze = in // 4
        'features_1_0/block_1/fc2/bias': (32,),
        'features_1_0/block_2/conv/kernel': (1, 1, 32, 16),  # projection
        'features_2_0/block_0/conv/kernel': (1, 1, 16, 96),  # expansion x6
        'features_2_0/block_1/conv/kernel': (3, 3, 1, 96),
        'features_2_0/block_2/fc1/kernel': (1, 1, 96, 4),
        'features_6_3/block_1/conv/kernel': (5, 5, 1, 1152),
        'features_8/conv/kernel': (1, 1, 320, 1280),
        'fc/kernel': (1280, 1000),
    }
    for path, shape in expected.items():
        assert flat[path].shape == shape, path
    assert not any(p.endswith('conv/bias') for p in flat)  # Convs before BN have no bias.


@pytest.mark.parametrize('arch', ['efficientnet_b0', 'efficientnet_b2', 'efficientnet_b0_tiny'])
def test_layer_groups_cover_every_variable_once(arch):
    model = models.get_model(arch, NUM_CLASSES)
    variables = _shapes(model, models.default_image_size(arch))
    names = [name for name, _ in model.layer_groups]
    assert names == ['stem', *[f'stage{s}' for s in range(1, 8)], 'head_conv', 'head']
    used = set()
    for collection in ('params', 'batch_stats'):
        for path in _flat(variables[collection]):
            groups = [n for n, regex in model.layer_groups if re.fullmatch(regex, path)]
            assert len(groups) == 1, f'{collection} {path} matches {groups}'
            used.add(groups[0])
    assert used == set(names)
    assert set(models.cut_points(model).values()) <= set(names)


def test_official_frozen_groups():
    model = efficientnet.EfficientNetB0(num_classes=10)
    body = ('stem', *[f'stage{s}' for s in range(1, 8)], 'head_conv')
    assert model.official_frozen_groups(0) == body
    assert model.official_frozen_groups(1) == ('stem', 'stage1')
    assert model.official_frozen_groups(6) == body[:7]
    assert model.official_frozen_groups(8) == body
    with pytest.raises(ValueError):
        model.official_frozen_groups(9)
    assert model.OFFICIAL_FREEZE_LAYERS is None


@pytest.fixture(scope='module')
def tiny():
    model = models.get_model('efficientnet_b0_tiny', NUM_CLASSES)
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x)

    @jax.jit
    def train_apply(variables, rng):
        return model.apply(variables, x, train=True, rngs={'dropout': rng}, mutable=['batch_stats'])

    return model, x, variables, train_apply


def test_tiny_forward_train_and_eval(tiny):
    model, x, variables, train_apply = tiny
    assert model.feat_dim == 160
    (features, logits), updates = train_apply(variables, jax.random.key(2))
    assert features.shape == (4, 160)
    assert logits.shape == (4, NUM_CLASSES)
    assert np.all(np.isfinite(logits))
    new, old = _flat(updates['batch_stats']), _flat(variables['batch_stats'])
    assert new.keys() == old.keys()
    assert all(not np.array_equal(new[k], old[k]) for k in new if k.endswith('/var'))
    eval_apply = jax.jit(model.apply)
    out1 = eval_apply({**variables, **updates}, x)
    out2 = eval_apply({**variables, **updates}, x)
    chex.assert_trees_all_equal(out1, out2)
    assert out1[0].shape == (4, 160)


def test_stochastic_depth_only_in_training(tiny):
    model, x, variables, train_apply = tiny
    outs = [np.asarray(train_apply(variables, jax.random.key(k))[0][1]) for k in range(4)]
    assert any(not np.allclose(outs[0], o) for o in outs[1:])

    block = efficientnet.MBConv(8, expand_ratio=2, kernel=3, stride=1, drop_prob=0.5)

    @jax.jit  # One program for every comparison below (test time).
    def outputs(key):
        x = jax.random.normal(key, (16, 4, 4, 8))
        variables = block.init(jax.random.key(1), x, False)

        def train(module, seed):
            rngs = {'dropout': jax.random.key(seed)}
            return module.apply(variables, x, True, rngs=rngs, mutable=['batch_stats'])[0]

        return x, variables, train(block, 2), train(block.clone(drop_prob=0.0), 2)

    x, variables, y, full = outputs(jax.random.key(0))
    dropped = np.all(np.asarray(y) == np.asarray(x), axis=(1, 2, 3))
    assert 0 < dropped.sum() < len(x)
    # torchvision's "row" mode: a kept example's branch is scaled by 1 / (1 - p).
    np.testing.assert_allclose(y[~dropped], (x + 2 * (full - x))[~dropped], rtol=1e-5, atol=1e-5)
    # Inference: the plain residual, no rng needed.
    infer = jax.jit(lambda v, x: block.apply(v, x, False))
    np.testing.assert_array_equal(infer(variables, x), infer(variables, x))  # Two calls.
    assert not np.allclose(infer(variables, x), x)


@pytest.mark.parametrize(
    'shape,k,stride', [((2, 9, 9, 6), 3, 1), ((2, 9, 8, 5), 5, 2), ((1, 8, 8, 4), 3, 2)]
)
def test_depthwise_conv_equals_the_grouped_convolution(shape, k, stride):
    """`layers.depthwise_conv` (shifted slices) against `lax`'s grouped convolution: values,
    input and kernel gradients (what EfficientNet's depthwise layers now run)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 1, shape[-1])), jnp.float32)
    pad = (k - 1) // 2

    def grouped(x, w):
        return jax.lax.conv_general_dilated(
            x,
            w,
            (stride, stride),
            ((pad, pad), (pad, pad)),
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
            feature_group_count=shape[-1],
        )

    def sliced(x, w):
        return layers.depthwise_conv(x, w, stride, pad)

    conv = nn.Conv(shape[-1], (k, k), feature_group_count=shape[-1], use_bias=False)
    ours = layers.DepthwiseConv(k, stride, pad)

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x, w):
        loss = lambda f: lambda *v: jnp.sum(jnp.sin(f(*v)))  # noqa: E731
        kernels = [m.init(jax.random.key(0), x)['params']['kernel'] for m in (ours, conv)]
        return [(f(x, w), jax.grad(loss(f), (0, 1))(x, w)) for f in (sliced, grouped)], kernels

    ((value, grads), (value_ref, grads_ref)), (got, want) = outputs(x, w)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # The module keeps nn.Conv's variable (name, shape) and initialiser.
    np.testing.assert_array_equal(got, want)
