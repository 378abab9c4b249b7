"""models.layers.max_pool: torch's F.max_pool2d value and gradient (ties go to the first
maximum of a window), and derivatives of every order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tldmi_jax.models.layers import max_pool

torch = pytest.importorskip('torch')

# (input shape NHWC, window, stride, padding): the demo CNN and VGG (2/2), the ResNet and
# DenseNet stems (3/2/1) with an odd size, and an overlapping stride-1 window.
CASES = [
    ((3, 8, 8, 4), 2, 2, 0),
    ((2, 9, 7, 3), 2, 2, 0),  # Floor mode: the last row and column are dropped.
    ((2, 11, 11, 5), 3, 2, 1),
    ((2, 6, 6, 2), 3, 1, 1),
]


def _input(shape, seed=0):
    """Random values, with a zero block and a constant block (ties inside windows)."""
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    x[:, :3, :3] = 0.0
    x[:, -3:, -3:] = 1.5
    return x


def _torch_value_and_grad(x, ct, window, stride, padding):
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
    ty = torch.nn.functional.max_pool2d(tx, window, stride, padding)
    ty.backward(torch.tensor(ct).permute(0, 3, 1, 2))
    return ty.detach().permute(0, 2, 3, 1).numpy(), tx.grad.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize('shape,window,stride,padding', CASES)
def test_value_and_gradient_match_torch(shape, window, stride, padding):
    x = _input(shape)
    pads = ((padding, padding), (padding, padding))

    def pool(a):
        return max_pool(a, window, stride, padding)

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x, ct):
        y, vjp = jax.vjp(pool, x)
        ref = nn.max_pool(x, (window, window), (stride, stride), pads)
        return y, ref, vjp(ct)[0]

    out_shape = jax.eval_shape(pool, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape
    ct = np.random.default_rng(1).normal(size=out_shape).astype(np.float32)
    y, ref, grad = outputs(jnp.asarray(x), jnp.asarray(ct))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))
    t_y, t_grad = _torch_value_and_grad(x, ct, window, stride, padding)
    np.testing.assert_array_equal(np.asarray(y), t_y)
    # Each output's cotangent lands on one input (the first maximum), exactly as in torch.
    np.testing.assert_allclose(np.asarray(grad), t_grad, rtol=0, atol=1e-6)
    assert np.count_nonzero(np.asarray(grad)) == np.count_nonzero(t_grad)


def test_ties_go_to_the_first_maximum():
    @jax.jit  # One program for every comparison below (test time).
    def outputs(x):
        grad = jax.grad(lambda a: max_pool(a, 2, 2).sum())(x)
        return grad, jax.grad(lambda a: nn.max_pool(a, (2, 2), (2, 2)).sum())(x)

    grad, ref = outputs(jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(np.asarray(grad)[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    # XLA's select_and_scatter (nn.max_pool's gradient) agrees on this.
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(ref))


def test_forward_mode_and_second_derivatives():
    x = jnp.asarray(_input((1, 6, 6, 2)))
    t = jnp.asarray(np.random.default_rng(2).normal(size=x.shape).astype(np.float32))
    f = lambda a: jnp.sum(jnp.square(max_pool(a, 3, 2, 1)))  # noqa: E731
    g = lambda a: jnp.sum(jnp.square(nn.max_pool(a, (3, 3), (2, 2), ((1, 1), (1, 1)))))  # noqa: E731

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x, t):
        # Hessian-vector products: the gradient is differentiable again (2 * t at each maximum).
        return [(jax.jvp(h, (x,), (t,))[1], jax.jvp(jax.grad(h), (x,), (t,))[1]) for h in (f, g)]

    (jvp, hvp), (jvp_ref, hvp_ref) = outputs(x, t)
    np.testing.assert_allclose(float(jvp), float(jvp_ref), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(hvp), np.asarray(hvp_ref), rtol=1e-6, atol=1e-6)
    assert np.count_nonzero(np.asarray(hvp)) > 0
