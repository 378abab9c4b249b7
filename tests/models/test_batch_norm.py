"""models.layers.batch_normalize (BatchNorm in training mode): the same values as the plain
formula and, through its closed-form gradient, the same derivatives as autodiff of it, to
second order; torch's BatchNorm2d agrees on values and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldmi_jax.models import layers
from tldmi_jax.models.layers import batch_normalize

EPS = 1e-5


def _plain(x, epsilon=EPS):
    """The formula as BatchNorm computed it before, left to autodiff."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return (x - mean) * jax.lax.rsqrt(var + epsilon), mean, var


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    # Per-channel offsets and scales, so that the centring and the variance matter.
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, shape[-1]) + rng.normal(size=shape[-1])
    return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize('shape', [(4, 5, 5, 3), (6, 7), (2, 3, 3, 2, 4)])
def test_values_and_gradient_equal_autodiff_of_the_formula(shape):
    x = _data(shape)
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(lambda v: batch_normalize(v, EPS), x)
    cotangents = tuple(jnp.asarray(rng.normal(size=o.shape), jnp.float32) for o in shapes)

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x, cotangents):
        # Each output's cotangent alone (the mean and var parts are small next to x_hat's),
        # then all.
        cts = [
            tuple(c if i == k else jnp.zeros_like(c) for i, c in enumerate(cotangents))
            for k in range(3)
        ] + [cotangents]
        results = []
        for f in (lambda v: batch_normalize(v, EPS), _plain):
            out, vjp = jax.vjp(f, x)
            results.append((out, [vjp(ct)[0] for ct in cts]))
        return results

    (out, dxs), (ref, dxs_ref) = outputs(x, cotangents)
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # The same operations.
    for k, (dx, dx_ref) in enumerate(zip(dxs, dxs_ref, strict=True)):
        if k < 3:
            assert np.abs(np.asarray(dx_ref)).max() > 1e-3
        np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), rtol=1e-4, atol=2e-6)


def test_second_order_and_vmap():
    x, c = _data((4, 3, 3, 2)), _data((4, 3, 3, 2), seed=2)

    def loss(f):
        return lambda v: jnp.sum(jnp.sin(f(v)[0]) * c) + jnp.sum(f(v)[2] ** 2)

    new, ref = loss(lambda v: batch_normalize(v, EPS)), loss(_plain)
    direction = _data((4, 3, 3, 2), seed=3)

    def hvp(f, x):
        return jax.grad(lambda v: jnp.vdot(jax.grad(f)(v), direction))(x)

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x):
        # Per-example gradients (DP-SGD's vmap over examples): each example its own statistics.
        xs = jnp.stack([x, 2.0 * x + 1.0])
        return [(hvp(f, x), jax.vmap(jax.grad(f))(xs)) for f in (new, ref)]

    (got, per), (want, per_ref) = outputs(x)
    assert np.abs(np.asarray(want)).max() > 1e-3
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(per), np.asarray(per_ref), rtol=1e-4, atol=1e-5)


def test_forward_mode_is_refused_with_jax_error():
    x = _data((2, 3))
    with pytest.raises(TypeError, match='forward-mode'):
        jax.jvp(lambda v: batch_normalize(v, EPS)[0], (x,), (x,))


def test_module_matches_torch_batchnorm_in_training():
    torch = pytest.importorskip('torch')
    x = _data((4, 5, 5, 3))
    module = layers.BatchNorm()
    variables = jax.jit(functools.partial(module.init, train=False))(jax.random.key(0), x)
    params = {
        'scale': jnp.asarray([0.5, 1.5, -2.0]),
        'bias': jnp.asarray([0.1, -0.2, 0.3]),
    }
    g = _data((4, 5, 5, 3), seed=4)

    def f(p, v):
        y, updates = module.apply(
            {'params': p, 'batch_stats': variables['batch_stats']},
            v,
            train=True,
            mutable=['batch_stats'],
        )
        return jnp.sum(y * g), (y, updates['batch_stats'])

    (dp, dx), (y, stats) = jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))(params, x)

    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(np.asarray(params['scale'])))
        bn.bias.copy_(torch.tensor(np.asarray(params['bias'])))
    bn.train()
    tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
    ty = bn(tx)
    (ty * torch.tensor(np.asarray(g).transpose(0, 3, 1, 2))).sum().backward()
    np.testing.assert_allclose(
        np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(dx), tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(dp['scale']), bn.weight.grad.numpy(), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(dp['bias']), bn.bias.grad.numpy(), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(stats['mean']), bn.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats['var']), bn.running_var.numpy(), rtol=1e-5)
