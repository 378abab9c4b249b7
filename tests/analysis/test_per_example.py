"""The per-layer formulas of `analysis.per_example` against `jax.vmap(jax.grad)`.

One small module calls every layer configuration the model zoo uses (and a few more the
formulas support), plus layers the formulas leave to autodiff; the Fisher sums of both
methods of `fisher.FisherEstimator` must agree. That every parameter of every architecture
gets a formula is checked from shapes alone (no compile), and one real tiny model is compared
numerically, plain and wrapped in MID's VIB head (whose interceptor sends its layers to
autodiff).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldmi_jax import models
from tldmi_jax.analysis import fisher, per_example
from tldmi_jax.defenses import mid
from tldmi_jax.models.layers import BatchNorm, PReLU

_PAD1 = ((1, 1), (1, 1))


class _Zoo(nn.Module):
    """Every layer configuration of the zoo (the family using it in the comment)."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), padding=_PAD1, name='conv3x3')(x)  # vgg16, small
        x = PReLU(name='prelu')(BatchNorm(name='bn')(x, train))  # irse
        x = nn.Conv(6, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, name='stem')(x)
        s = nn.Conv(6, (1, 1), (2, 2), use_bias=False, name='shortcut')(x)  # resnet, irse
        x = nn.Conv(6, (3, 3), (2, 2), padding=_PAD1, use_bias=False, name='strided')(x) + s
        x = nn.Conv(6, (1, 7), padding=((0, 0), (3, 3)), name='row')(x)  # inception
        x = nn.Conv(6, (7, 1), padding=((3, 3), (0, 0)), name='col')(x)
        x = nn.Conv(6, (3, 3), padding='SAME', feature_group_count=6, name='depthwise')(x)
        se = nn.Conv(3, (1, 1), name='se')(jnp.mean(x, (1, 2), keepdims=True))  # efficientnet
        x = x * nn.sigmoid(nn.Conv(6, (1, 1), name='se_out')(se))
        x = nn.Conv(4, (3, 3), feature_group_count=2, kernel_dilation=2, name='grouped')(x)
        low = ((1, 0), (1, 0))
        x = nn.Conv(4, (2, 2), (2, 2), padding=low, input_dilation=2, name='dilated')(x)
        # Few positions, more channels: the Gram form of `squared_norms` (as `se`, `se_out`).
        x = nn.Conv(16, (3, 3), padding=_PAD1, name='gram')(x)
        x = nn.Dense(4, name='pointwise')(x)  # Extra axes: one row per position.
        shared = nn.Dense(4, name='shared')  # Called twice: gradients add up per example.
        x = shared(nn.relu(shared(x)))
        x = nn.ConvTranspose(4, (2, 2), (2, 2), name='transposed')(x)  # Left to autodiff:
        x = nn.Conv(4, (3, 3), padding='CIRCULAR', name='circular')(x)
        x = nn.BatchNorm(use_running_average=True, name='flax_bn')(x)
        x = x * self.param('raw', nn.initializers.ones, (4,))
        x = BatchNorm(use_bias=False, name='head_bn')(x.reshape(len(x), -1), train)  # vgg16
        return x, nn.Dense(5, name='fc')(x)


_AUTODIFF = (
    'transposed/kernel',
    'transposed/bias',
    'circular/kernel',
    'circular/bias',
    'flax_bn/scale',
    'flax_bn/bias',
    'raw',
)


def _variables(model, x):
    """He-scaled kernels (gradients of order 1); vectors (biases, scales, statistics) in
    [0.5, 1), BatchNorm statistics included, so away from their defaults."""
    rng = np.random.default_rng(1)

    def draw(leaf):
        if len(leaf.shape) < 2:
            return rng.uniform(0.5, 1.0, leaf.shape).astype(np.float32)
        scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        return (rng.normal(size=leaf.shape) * scale).astype(np.float32)

    return jax.tree.map(draw, jax.eval_shape(model.init, jax.random.key(0), x[:1]))


def _compare(model, x, y, chunk):
    """Max relative L2 difference of the `layers` Fisher (per parameter, and per tensor:
    `per_example.squared_norms`) from `vmap`'s over the parameter tensors."""
    variables = _variables(model, x)
    state = {k: v for k, v in variables.items() if k != 'params'}
    loss = _loss(model, state)

    def run(method, per):
        estimator = fisher.FisherEstimator(loss, chunk, method=method, per=per)
        return jax.tree.leaves(estimator.run(variables['params'], [(x, y)])[0])

    want = run('vmap', 'parameter')
    worst = 0.0
    for got, ref in zip(run('layers', 'parameter'), want, strict=True):
        assert np.all(np.isfinite(got)) and np.linalg.norm(ref) > 0
        worst = max(worst, np.linalg.norm(got - ref) / np.linalg.norm(ref))
    for got, ref in zip(run('layers', 'tensor'), want, strict=True):
        assert np.shape(got) == () and np.isfinite(got)
        worst = max(worst, abs(got - ref.sum()) / ref.sum())
    return worst, variables, loss


def _loss(model, state):
    def loss(params, x, y):
        _, logits = model.apply({'params': params, **state}, x[None], train=False)
        return -jax.nn.log_softmax(logits[0])[y]

    return loss


def test_every_layer_configuration_matches_vmap():
    model = _Zoo()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 5, 5).astype(np.int32)
    worst, variables, loss = _compare(model, x, y, chunk=3)  # 2 chunks, the last one masked.
    assert worst < 1e-5
    split = per_example.coverage(loss, variables['params'], x[0], y[0])
    assert sorted(split['autodiff']) == sorted(_AUTODIFF)


# Convolutions whose Gram form (`_Conv.norms`) is cheaper than their per-tap products: few
# output positions, many channels; (kernel, strides, padding, input dilation, kernel
# dilation), the input [N, B, *spatial, C] and the output channels.
_GRAM_CASES = (
    (((3, 3), (1, 1), _PAD1, (1, 1), (1, 1)), (3, 1, 4, 4, 32), 32),
    (((3, 3), (2, 2), 'SAME', (1, 1), (1, 1)), (3, 2, 6, 6, 24), 40),  # Two rows per example.
    (((3, 3), (1, 1), 'VALID', (1, 1), (2, 2)), (3, 1, 6, 6, 32), 32),
    (((2, 2), (2, 2), ((1, 0), (1, 0)), (2, 2), (1, 1)), (3, 1, 3, 3, 32), 32),
    (((3,), (1,), 'SAME', (1,), (1,)), (3, 1, 5, 32), 32),
)


def test_gram_form_equals_the_per_tap_products():
    """`_Conv.norms` (Gram matrices over the output positions) against the squared per-tap
    gradients of `_Conv.one`, example by example, with weights (one of them 0); where the
    per-tap products are cheaper (many positions, few channels) it declines."""
    rng = np.random.default_rng(4)
    w = jnp.asarray([1.0, 0.5, 0.0])
    for i, ((size, strides, pads, in_dil, k_dil), shape, out) in enumerate(_GRAM_CASES):
        use_bias = i % 2 == 0
        rule = per_example._Conv(size, strides, pads, in_dil, k_dil, 1, use_bias)
        x = rng.normal(size=shape).astype(np.float32)
        conv = nn.Conv(out, size, strides, pads, in_dil, k_dil, use_bias=use_bias)
        y = jax.eval_shape(conv.init_with_output, jax.random.key(0), x[0])[0].shape
        dy = rng.normal(size=(len(x), *y)).astype(np.float32)
        got = rule.norms(x, dy, w)
        assert got is not None, (size, shape)
        want = {}
        for n in range(len(x)):
            for name, g in rule.one(x[n], dy[n]).items():
                sq = sum(float(jnp.sum(jnp.square(a))) for a in jax.tree.leaves(g))
                want[name] = want.get(name, 0.0) + float(w[n]) * sq
        assert sorted(got) == sorted(want) == ['bias', 'kernel'][1 - use_bias :]
        for name in want:
            np.testing.assert_allclose(float(got[name]), want[name], rtol=1e-5)
    wide = per_example._Conv((3, 3), (1, 1), _PAD1, (1, 1), (1, 1), 1, True)
    x, dy = np.ones((1, 1, 32, 32, 8), np.float32), np.ones((1, 1, 32, 32, 8), np.float32)
    assert wide.norms(x, dy, jnp.ones(1)) is None


@pytest.mark.parametrize('arch', [a for a in models.ARCHS if a.endswith('_tiny')])
def test_every_parameter_of_every_architecture_gets_a_formula(arch):
    model = models.get_model(arch, 5)
    size = models.default_image_size(arch)
    x = jax.ShapeDtypeStruct((size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    stats = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), variables.get('batch_stats', {}))
    loss = fisher.classifier_loss(model, stats)
    split = per_example.coverage(loss, variables['params'], x, jax.ShapeDtypeStruct((), jnp.int32))
    assert split['autodiff'] == [] and split['formula']


def test_a_second_discovery_of_the_same_loss_finds_the_same_layers():
    """`jax.eval_shape` caches its trace per function and shapes, and the layers are found
    by a side effect of tracing: a second discovery with the same loss (a second estimator,
    `coverage` after `squared_norms`) found no layer at all, and every parameter silently
    took the slower autodiff path."""
    model = models.get_model('small_tiny', 5)
    x = jax.ShapeDtypeStruct((16, 16, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    stats = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), variables['batch_stats'])
    loss = fisher.classifier_loss(model, stats)
    y = jax.ShapeDtypeStruct((), jnp.int32)
    first, second = (per_example.coverage(loss, variables['params'], x, y) for _ in range(2))
    assert first == second and first['autodiff'] == [] and first['formula']


@pytest.mark.parametrize('vib', [False, True])
def test_a_real_model_matches_vmap(vib):
    """small_tiny by the formulas; wrapped in MID's VIB head, which feeds `fc` the bottleneck
    through its own interceptor, no formula may use the input this one recorded: every layer
    it runs goes to autodiff. The sums agree either way."""
    model = models.get_model('small_tiny', 5)
    model = mid.VIB(model) if vib else model
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 5, 3).astype(np.int32)
    worst, variables, loss = _compare(model, x, y, chunk=3)
    assert worst < 1e-5
    split = per_example.coverage(loss, variables['params'], x[0], y[0])
    if vib:
        assert {'fc/kernel', 'vib/kernel', 'block0/conv/kernel'} <= set(split['autodiff'])
    else:
        assert split['autodiff'] == []
