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
    """Max relative L2 difference of the two methods' Fisher over the parameter tensors."""
    variables = _variables(model, x)
    state = {k: v for k, v in variables.items() if k != 'params'}
    loss = _loss(model, state)
    runs = [
        fisher.FisherEstimator(loss, chunk, method=m).run(variables['params'], [(x, y)])[0]
        for m in ('layers', 'vmap')
    ]
    worst = 0.0
    for got, want in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1]), strict=True):
        assert np.all(np.isfinite(got)) and np.linalg.norm(want) > 0
        worst = max(worst, np.linalg.norm(got - want) / np.linalg.norm(want))
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
