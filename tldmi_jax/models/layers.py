"""Layers shared by the model families, with PyTorch semantics where they matter.

`BatchNorm` follows `torch.nn.BatchNorm{1,2}d`: normalises with the biased batch
variance, updates the running variance with the unbiased one, and uses torch's
momentum convention (`running = (1 - momentum) * running + momentum * batch`,
default 0.1). Its `train` argument is a call argument, so the freezing code can
switch individual layers to running statistics with `nn.intercept_methods`
(see `tldmi_jax.defenses.transfer.bn_policy_interceptor`).

`max_pool` is torch's `F.max_pool2d` (floor mode, -inf padding) whose derivative sends each
output's gradient to the first maximum of its window, as torch's CPU kernel does, at a
fraction of the cost of XLA:CPU's `select_and_scatter` (the gradient of `nn.max_pool`).
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def batch_normalize(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`((x - mean) * rsqrt(var + epsilon), mean, var)`, the statistics over every axis but
    the last (the biased variance), with the closed-form gradient:
    `dx = rsqrt(var + epsilon) * (g - mean(g) - x_hat * mean(g * x_hat))` plus the parts of
    the `mean` and `var` cotangents. Reverse mode only (`jax.grad`, `jax.vjp`, to any order);
    forward mode (`jax.jvp`) is refused by JAX."""
    return _moments(x, epsilon)[0]


def _moments(x: jax.Array, epsilon: float):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=axes)
    rstd = jax.lax.rsqrt(var + epsilon)
    return (centred * rstd, mean, var), rstd


def _batch_normalize_fwd(x: jax.Array, epsilon: float):
    out, rstd = _moments(x, epsilon)
    return out, (out[0], rstd)


def _batch_normalize_bwd(epsilon: float, residuals, cotangents):
    x_hat, rstd = residuals
    g, d_mean, d_var = cotangents
    axes = tuple(range(x_hat.ndim - 1))
    n = x_hat.size // x_hat.shape[-1]
    dx = rstd * (g - jnp.mean(g, axis=axes) - x_hat * jnp.mean(g * x_hat, axis=axes))
    # mean: d/dx = 1/n; var = mean((x - mean)^2): d/dx = 2 (x - mean) / n = 2 x_hat / (rstd n).
    return (dx + d_mean / n + x_hat * (2.0 * d_var / (n * rstd)),)


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)


# On XLA:CPU a convolution over a large batch runs slower per example than the same
# convolution over chunks of about 8 examples, its kernel gradient up to 2.7x; on maps
# smaller than 8 x 8, or with little data per example, the extra calls cost more than they
# save (docs/testing.md). A chunk holds at least CONV_BATCH_CHUNK examples and
# CONV_CHUNK_BYTES of input or output activations; outputs of fewer than
# CONV_CHUNK_MIN_POSITIONS positions per example are not split.
CONV_BATCH_CHUNK = 8
CONV_CHUNK_BYTES = 256 << 10
CONV_CHUNK_MIN_POSITIONS = 64


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` (the same arguments and result) that, on CPU, splits a
    large batch into chunks of `max(CONV_BATCH_CHUNK, CONV_CHUNK_BYTES / the larger of one
    example's input and output bytes)` examples, unless the output map is small (fewer than
    `CONV_CHUNK_MIN_POSITIONS` positions): one convolution per chunk, results
    concatenated. Autodiff then computes the input gradient per chunk too, and the kernel
    gradient as a sum over chunks (float rounding differs from one convolution's); forward
    mode works as for `lax`. The flax layers take it as
    `nn.Conv(..., conv_general_dilated=conv_general_dilated)` (`Conv`)."""
    conv = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    batch_axis, out_axis = dn.lhs_spec[0], dn.out_spec[0]
    size = lhs.shape[batch_axis]
    if jax.default_backend() != 'cpu' or batch_group_count != 1 or size <= CONV_BATCH_CHUNK:
        return conv(lhs, rhs)
    one = jax.eval_shape(conv, jax.ShapeDtypeStruct((1, *lhs.shape[1:]), lhs.dtype), rhs)
    if math.prod(one.shape[i] for i in dn.out_spec[2:]) < CONV_CHUNK_MIN_POSITIONS:
        return conv(lhs, rhs)
    per_example = max(
        lhs.size // size * lhs.dtype.itemsize, math.prod(one.shape) * one.dtype.itemsize
    )
    chunk = max(CONV_BATCH_CHUNK, -(-CONV_CHUNK_BYTES // per_example))
    if size <= chunk:
        return conv(lhs, rhs)
    sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
    # `lax.split`'s transpose is a concatenation: the input gradient is not assembled from
    # zero-padded pieces.
    parts = jax.lax.split(lhs, sizes, axis=batch_axis)
    return jax.lax.concatenate([conv(part, rhs) for part in parts], out_axis)


# `nn.Conv` (the same module, parameters and names) with `conv_general_dilated` above.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with torch semantics.

    Attributes:
      momentum: torch-style momentum for the running statistics.
      epsilon: added to the variance.
      use_bias: learn a shift (`bias`); False gives torch's frozen-zero bias.
      use_scale: learn a scale (`scale`).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        mean_s = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
        var_s = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
        if train:
            y, mean, var = batch_normalize(x, self.epsilon)
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                mean_s.value = (1.0 - m) * mean_s.value + m * mean
                var_s.value = (1.0 - m) * var_s.value + m * unbiased
        else:
            y = (x - mean_s.value) * jax.lax.rsqrt(var_s.value + self.epsilon)
        if self.use_scale:
            y = y * self.param('scale', nn.initializers.ones, (features,), jnp.float32)
        if self.use_bias:
            y = y + self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
        return y


def _padded(x: jax.Array, window: int, stride: int, padding: int, fill: float):
    """`(x padded by `fill`, Ho, Wo)` of a square window sliding over [B, H, W, C]."""
    _, h, w, _ = x.shape
    ho = (h + 2 * padding - window) // stride + 1
    wo = (w + 2 * padding - window) // stride + 1
    if padding:
        pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
        x = jnp.pad(x, pads, constant_values=fill)
    return x, ho, wo


def _window_taps(x: jax.Array, window: int, stride: int, padding: int, fill: float) -> list:
    """The [B, Ho, Wo, C] view of every tap of the window, row-major: tap (i, j) of output
    (p, q) is input (p * stride + i, q * stride + j) of the padded x."""
    x, ho, wo = _padded(x, window, stride, padding, fill)
    last_h, last_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    return [
        x[:, i : i + last_h : stride, j : j + last_w : stride]
        for i in range(window)
        for j in range(window)
    ]


def _windows(x: jax.Array, window: int, stride: int, padding: int, fill: float) -> jax.Array:
    """[B, H, W, C] -> [B, Ho, Wo, C, window**2]: every pooling window, row-major."""
    if window == stride:  # Non-overlapping: a reshape (floor mode drops the remainder).
        x, ho, wo = _padded(x, window, stride, padding, fill)
        b, c = x.shape[0], x.shape[-1]
        x = x[:, : ho * stride, : wo * stride].reshape(b, ho, window, wo, window, c)
        return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, ho, wo, c, window * window)
    return jnp.stack(_window_taps(x, window, stride, padding, fill), axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """Torch `F.max_pool2d(x, window, stride, padding)` on NHWC.

    The value is `nn.max_pool`'s. The derivative is linear in the tangent: each output takes
    the tangent at the first maximum (row-major) of its window, which is what torch's CPU
    backward does with ties. Its transpose (the gradient) is a few reshapes, slices and pads
    instead of XLA:CPU's `select_and_scatter`: 26.6 ms -> 0.8 ms for the demo CNN's first
    pooling (batch 128, 32x32x16), 27.6 ms -> 6.9 ms for ResNet's 3x3/2 stem pooling.
    Higher derivatives and forward mode work (it is a `custom_jvp`).

    Args:
      x: [B, H, W, C].
      window: square window side.
      stride: both axes.
      padding: symmetric, with -inf (torch semantics).
    """
    pads = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


@max_pool.defjvp
def _max_pool_jvp(window, stride, padding, primals, tangents):
    (x,), (t,) = primals, tangents
    out = max_pool(x, window, stride, padding)
    first = jnp.argmax(_windows(x, window, stride, padding, -jnp.inf), axis=-1)
    chosen = first[..., None] == jnp.arange(window * window)
    t_out = jnp.sum(jnp.where(chosen, _windows(t, window, stride, padding, 0.0), 0.0), axis=-1)
    return out, t_out


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """A depthwise convolution (`feature_group_count` = channels) as a sum of shifted slices.

    Equal to `lax.conv_general_dilated(x, kernel, (s, s), padding,
    feature_group_count=C)` up to float summation order. XLA:CPU runs grouped convolutions
    slowly: for EfficientNet's depthwise layers at batch 8 the forward took 4-29 ms this way
    against 0.1-2.2 ms as slices, the input gradient 11-282 ms against 2-18 ms.

    Args:
      x: [B, H, W, C].
      kernel: [k, k, 1, C] (`nn.Conv(C, (k, k), feature_group_count=C)`'s kernel).
      stride: both axes.
      padding: symmetric zero padding.
    """
    k = kernel.shape[0]
    dtype = jnp.result_type(x, kernel)
    taps = _window_taps(x.astype(dtype), k, stride, padding, 0.0)
    weights = kernel.astype(dtype).reshape(k * k, -1)  # Row-major taps, as `taps`.
    out = taps[0] * weights[0]
    for tap, weight in zip(taps[1:], weights[1:], strict=True):
        out = out + tap * weight
    return out


class DepthwiseConv(nn.Module):
    """`nn.Conv(C, (k, k), stride, padding, feature_group_count=C, use_bias=False)` (the same
    `kernel` variable, shape and initialiser) computed by `depthwise_conv`."""

    kernel_size: int
    stride: int = 1
    padding: int = 0
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kernel = self.param('kernel', self.kernel_init, (self.kernel_size, self.kernel_size, 1, c))
        return depthwise_conv(x, kernel, self.stride, self.padding)


class PReLU(nn.Module):
    """Per-channel PReLU (torch `nn.PReLU(num_parameters=C)`, init 0.25)."""

    init: float = 0.25

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param('alpha', nn.initializers.constant(self.init), (x.shape[-1],))
        return jnp.where(x >= 0, x, alpha * x)


def torch_conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    """A square bias-free convolution with torch's symmetric padding `kernel // 2` (the
    convolutions of torchvision's ResNets and DenseNets)."""
    pad = kernel // 2
    return Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        name=name,
    )


def param_count(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Parameters of `model` (not batch statistics) on [1, size, size, channels] inputs,
    from shapes only (`jax.eval_shape`, nothing computed)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    shapes = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes['params']))


def frozen_children(
    layer_groups: Sequence[tuple[str, str]], k: int, child_index: Sequence[int]
) -> tuple[str, ...]:
    """The groups a `freeze_layers=k` over a torchvision model's children freezes.

    Args:
      layer_groups: the model's `(group, regex)` list, the head last (never frozen).
      k: the `freeze_layers` value: `k > 0` freezes the body groups whose child index is
        `<= k`; `k == 0` freezes the whole body (a linear probe, as TL-DMI's special case).
      child_index: one child index per body group, in order.

    Raises:
      ValueError: if `k < 0`.
    """
    if k < 0:
        raise ValueError(f'freeze_layers must be >= 0, got {k}')
    body = tuple(name for name, _ in layer_groups[:-1])
    if k == 0:
        return body
    return tuple(name for name, i in zip(body, child_index, strict=True) if i <= k)
