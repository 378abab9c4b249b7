"""models.layers.conv_general_dilated: `lax.conv_general_dilated` over batch chunks on CPU.

The same forward values and input gradients as one convolution (bit for bit on this CPU),
the kernel gradient to float rounding, forward mode and vmap; the model zoo's convolutions
use it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldmi_jax import models
from tldmi_jax.models import layers

CHUNK = layers.CONV_BATCH_CHUNK


@pytest.fixture
def every_size(monkeypatch):
    """Chunks of CHUNK examples whatever the size of the maps (the tests' maps are tiny)."""
    monkeypatch.setattr(layers, 'CONV_CHUNK_BYTES', 0)
    monkeypatch.setattr(layers, 'CONV_CHUNK_MIN_POSITIONS', 0)


def _convs(jaxpr) -> int:
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == 'conv_general_dilated'
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _convs(sub)
    return count


# (batch, kernel, strides, padding, lhs dilation, rhs dilation, groups, dimension numbers)
CASES = [
    (2 * CHUNK + 3, 3, (1, 1), ((1, 1), (1, 1)), None, None, 1, ('NHWC', 'HWIO', 'NHWC')),
    (CHUNK + 1, 3, (2, 2), 'SAME', None, (2, 2), 1, ('NHWC', 'HWIO', 'NHWC')),
    (2 * CHUNK, 1, (1, 1), ((0, 0), (0, 0)), (2, 2), None, 2, ('NHWC', 'HWIO', 'NHWC')),
    (CHUNK + 2, 3, (1, 1), ((0, 1), (1, 0)), None, None, 1, ('NCHW', 'OIHW', 'NCHW')),
]


@pytest.mark.parametrize('batch,k,strides,padding,lhs_dil,rhs_dil,groups,dn', CASES)
def test_equals_lax_with_gradients(
    every_size, batch, k, strides, padding, lhs_dil, rhs_dil, groups, dn
):
    rng = np.random.default_rng(0)
    channels_last = dn[0] == 'NHWC'
    shape = (batch, 7, 6, 4) if channels_last else (batch, 4, 7, 6)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel_shape = (k, k, 4 // groups, 6) if dn[1] == 'HWIO' else (6, 4 // groups, k, k)
    w = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    kwargs = dict(
        window_strides=strides,
        padding=padding,
        lhs_dilation=lhs_dil,
        rhs_dilation=rhs_dil,
        dimension_numbers=dn,
        feature_group_count=groups,
    )

    def ours(a, b):
        return layers.conv_general_dilated(a, b, **kwargs)

    def ref(a, b):
        return jax.lax.conv_general_dilated(a, b, **kwargs)

    # On CPU the batch runs in ceil(batch / CHUNK) convolutions.
    assert _convs(jax.make_jaxpr(ours)(x, w).jaxpr) == -(-batch // CHUNK)
    y_shape = jax.eval_shape(ours, x, w).shape
    g = jnp.asarray(rng.normal(size=y_shape), jnp.float32)

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x, w, g):
        y, vjp = jax.vjp(ours, x, w)
        y_ref, vjp_ref = jax.vjp(ref, x, w)
        # Forward mode works (no custom rule), and under vmap too.
        tangents = (jnp.ones_like(x), 0.5 * jnp.ones_like(w))
        _, jvp = jax.jvp(ours, (x, w), tangents)
        _, jvp_ref = jax.jvp(ref, (x, w), tangents)
        per = jax.vmap(lambda a: ours(a[None], w)[0])(x)
        return y, y_ref, vjp(g), vjp_ref(g), jvp, jvp_ref, per

    y, y_ref, (dx, dw), (dx_ref, dw_ref), jvp, jvp_ref, per = outputs(x, w, g)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(dw_ref), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(jvp), np.asarray(jvp_ref), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(per), np.asarray(y_ref), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    'batch,hw,channels,convs',
    [
        (64, 64, 64, 8),  # 1 MiB per example: chunks of CHUNK.
        (128, 8, 16, 2),  # 4 KiB per example: chunks of CONV_CHUNK_BYTES (64 examples).
        (128, 4, 512, 1),  # A 4 x 4 map: not split.
    ],
)
def test_chunk_size_follows_the_maps(batch, hw, channels, convs):
    x = jax.ShapeDtypeStruct((batch, hw, hw, channels), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, channels, channels), jnp.float32)
    dn = ('NHWC', 'HWIO', 'NHWC')
    jaxpr = jax.make_jaxpr(
        lambda a, b: layers.conv_general_dilated(a, b, (1, 1), 'SAME', dimension_numbers=dn)
    )(x, w).jaxpr
    assert _convs(jaxpr) == convs


def test_small_batches_are_one_convolution(every_size):
    x, w = jnp.ones((CHUNK, 5, 5, 2)), jnp.ones((3, 3, 2, 3))
    dn = ('NHWC', 'HWIO', 'NHWC')
    jaxpr = jax.make_jaxpr(
        lambda a, b: layers.conv_general_dilated(a, b, (1, 1), 'SAME', dimension_numbers=dn)
    )(x, w).jaxpr
    assert _convs(jaxpr) == 1


@pytest.mark.parametrize(
    'arch', ['vgg16_tiny', 'ir152_tiny', 'small', 'resnet18_tiny', 'efficientnet_b0_tiny']
)
def test_the_model_zoo_convolves_in_chunks(every_size, arch):
    """Every convolution of these models is split: a batch of CHUNK + 1 doubles them."""
    model = models.get_model(arch, num_classes=5)
    size, channels = models.default_image_size(arch), 3

    def count(batch):
        x = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
        variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
        return _convs(
            jax.make_jaxpr(lambda v, a: model.apply(v, a, train=False))(variables, x).jaxpr
        )

    one = count(CHUNK)
    assert one > 0 and count(CHUNK + 1) == 2 * one
