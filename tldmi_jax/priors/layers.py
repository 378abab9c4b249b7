"""Layers of the GAN priors, with PyTorch semantics and weight layouts.

* `ConvTranspose`: `torch.nn.ConvTranspose2d(k, s, padding=p, output_padding=op)` computed
  exactly by a sub-pixel decomposition (one stride-1 convolution producing all `s * s`
  output phases, then a depth-to-space interleave), or, for wide layers, by one convolution
  per phase with only that phase's taps (`conv_transpose_phases`). XLA:CPU runs lhs-dilated
  convolutions (what `lax.conv_transpose` lowers to) an order of magnitude slower,
  especially their kernel gradient. The kernel is `(kh, kw, out, in)`, as `nn.ConvTranspose(...,
  transpose_kernel=True)`, so a torch weight `(in, out, kh, kw)` converts by
  `transpose(2, 3, 1, 0)`.
* `InstanceNorm`: `torch.nn.InstanceNorm2d(C, affine=True)` (no running statistics).
* `SNConv`, `SNDense`, `SNEmbed`: `torch.nn.utils.spectral_norm` around Conv2d, Linear and
  Embedding. The power-iteration vectors `u` (rows) and `v` (columns) live in the mutable
  collection 'spectral'; a call with `train=True` does one power iteration and stores it
  (torch's training mode), `train=False` reuses the stored vectors (torch's eval mode).
* `CategoricalConditionalBatchNorm`: torch-semantics BatchNorm without affine, then a
  per-class scale and shift from two embeddings (PLG-MI's `links/conditional_batchnorm.py`).
* `MinibatchDiscrimination` (Salimans et al. 2016, KEDMI's `models/discri.py`).
* `upsample2x_bilinear`, `avg_pool2x`: `F.interpolate(scale 2, 'bilinear')` (align_corners
  False) and `F.avg_pool2d(x, 2)`.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tldmi_jax.models.layers import BatchNorm

SPECTRAL = 'spectral'  # Collection holding the spectral-norm power-iteration vectors.
# `ConvTranspose` computes per output phase (`conv_transpose_phases`) from this many output
# channels of the sub-pixel convolution (s * s * features) on; below it, sub-pixel.
PHASES_FROM_CHANNELS = 512
_DN = ('NHWC', 'HWIO', 'NHWC')
# The kernel as stored ([kh, kw, out, in]): XLA transposes it once, not in every consumer of
# its gradient (fused into each of Adam's updates, a transpose runs several times slower).
_DN_OI = ('NHWC', 'HWOI', 'NHWC')


def _phase_taps(k: int, s: int, p: int) -> tuple[np.ndarray, int]:
    """Per output phase, which kernel tap sits at each window position (one dimension).

    Torch's transposed convolution writes `out[o] = sum_{i, t: o = i*s - p + t} x[i] w[t]`.
    For the phase `r` (outputs `o = s*m + r`) the taps are `t = t0 + s*j` with
    `t0 = (r + p) mod s`, reading `x[m + c - j]`, `c = (r + p) // s`. All phases share one
    window of input offsets `[lo, hi]` relative to `m`.

    Returns:
      `(taps [s, window] int, lo)`: taps[r, u] is the tap at input offset `lo + u`, or `k`
      (a zero tap) where phase r reads nothing.
    """
    entries = []
    for r in range(s):
        t0, c = (r + p) % s, (r + p) // s
        entries.append([(c - j, t0 + s * j) for j in range((k - t0 + s - 1) // s)])
    offsets = [off for phase in entries for off, _ in phase]
    lo, hi = min(offsets), max(offsets)
    taps = np.full((s, hi - lo + 1), k, dtype=np.int32)
    for r, phase in enumerate(entries):
        for off, t in phase:
            taps[r, off - lo] = t
    return taps, lo


def _phase_part(kernel: jax.Array, taps: np.ndarray, axis: int) -> tuple[jax.Array, int] | None:
    """The taps of `kernel` one phase reads along `axis`, in window order, and the window
    position of the first (`taps[u]` is the tap at position u, `k` where there is none);
    None where the phase reads no tap. A phase's taps are every s-th one, in descending order
    over consecutive positions: a strided slice, reversed (no gather, whose gradient XLA:CPU
    runs as a slow scatter)."""
    used = np.flatnonzero(taps != kernel.shape[axis])
    if not len(used):
        return None
    first, last = int(used[0]), int(used[-1])
    top, step = int(taps[first]), int(taps[first + 1] - taps[first]) if last > first else -1
    assert step < 0 and np.array_equal(
        taps[first : last + 1], top + step * np.arange(last - first + 1)
    )
    part = jax.lax.slice_in_dim(kernel, int(taps[last]), top + 1, -step, axis)
    return jax.lax.rev(part, (axis,)), first


def _phase_window(kernel: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
    """`kernel` along `axis` rearranged to one phase's whole window: `_phase_part`, padded
    with zeros where the phase reads no tap."""
    found = _phase_part(kernel, taps, axis)
    if found is None:
        shape = list(kernel.shape)
        shape[axis] = len(taps)
        return jnp.zeros(shape, kernel.dtype)
    part, first = found
    pads = [(0, 0)] * kernel.ndim
    pads[axis] = (first, len(taps) - first - part.shape[axis])
    return jnp.pad(part, pads)


def _interleave(y: jax.Array, out_h: int, out_w: int) -> jax.Array:
    """[B, Mh, Mw, sh, sw, C], phase (r, c) of the phase output (m, n) at [:, m, n, r, c] ->
    [B, out_h, out_w, C], where it is output (m * sh + r, n * sw + c) (depth to space)."""
    b, m_h, m_w, sh, sw, c = y.shape
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, m_h * sh, m_w * sw, c)
    return y[:, :out_h, :out_w]


def _phase_geometry(x_shape, kernel_shape, strides, padding, output_padding):
    """`((out_h, out_w), (taps_h, lo_h), (taps_w, lo_w), (m_h, m_w))` of a transposed
    convolution: its output size, each axis's `_phase_taps`, the outputs per phase (ceil)."""
    (kh, kw), (sh, sw), (ph, pw), (oph, opw) = kernel_shape[:2], strides, padding, output_padding
    h, w = x_shape[1:3]
    out_h, out_w = (h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw
    taps = (_phase_taps(kh, sh, ph), _phase_taps(kw, sw, pw))
    return (out_h, out_w), *taps, (-(-out_h // sh), -(-out_w // sw))


def conv_transpose_subpixel(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    precision=None,
) -> jax.Array:
    """Torch `ConvTranspose2d` (no bias) as one stride-1 conv plus depth-to-space.

    Args:
      x: [B, H, W, Cin].
      kernel: [kh, kw, Cout, Cin] (the layout of `nn.ConvTranspose(transpose_kernel=True)`).
      strides: (sh, sw).
      padding: torch `padding` (ph, pw).
      output_padding: torch `output_padding` (oph, opw).
      precision: passed to `lax.conv_general_dilated`.

    Returns:
      [B, (H - 1) * sh - 2 * ph + kh + oph, (W - 1) * sw - 2 * pw + kw + opw, Cout].
    """
    cout, cin = kernel.shape[2:]
    (sh, sw), b, h, w = strides, *x.shape[:3]
    (out_h, out_w), (taps_h, lo_h), (taps_w, lo_w), (m_h, m_w) = _phase_geometry(
        x.shape, kernel.shape, strides, padding, output_padding
    )
    u_h, u_w = taps_h.shape[1], taps_w.shape[1]
    sub = jnp.stack(
        [
            jnp.stack([_phase_window(rows, tw, axis=1) for tw in taps_w])
            for rows in (_phase_window(kernel, th, axis=0) for th in taps_h)
        ]
    )  # [sh, sw, Uh, Uw, Co, Ci]
    sub = sub.transpose(2, 3, 0, 1, 4, 5).reshape(u_h, u_w, sh * sw * cout, cin)
    # Output m of phase r reads inputs m + lo .. m + lo + U - 1; negative pads crop.
    pad_h = (-lo_h, m_h - 1 + lo_h + u_h - h)
    pad_w = (-lo_w, m_w - 1 + lo_w + u_w - w)
    dtype = jnp.result_type(x, sub)  # As flax's layers: float64 inputs (x64 mode) promote.
    x, sub = x.astype(dtype), sub.astype(dtype)
    y = jax.lax.conv_general_dilated(
        x, sub, (1, 1), (pad_h, pad_w), dimension_numbers=_DN_OI, precision=precision
    )
    return _interleave(y.reshape(b, m_h, m_w, sh, sw, cout), out_h, out_w)


def conv_transpose_phases(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    precision=None,
) -> jax.Array:
    """The same as `conv_transpose_subpixel`, with one convolution per output phase, each
    with only the taps that phase reads (25 taps of a 5x5 stride-2 kernel instead of 36),
    then the phases interleaved. Faster where the kernel is large next to the input (a
    generator's first layers); slower elsewhere (more, smaller convolutions)."""
    cout = kernel.shape[2]
    (sh, sw), b, h, w = strides, *x.shape[:3]
    (out_h, out_w), (taps_h, lo_h), (taps_w, lo_w), (m_h, m_w) = _phase_geometry(
        x.shape, kernel.shape, strides, padding, output_padding
    )
    dtype = jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    phases = []
    for row_taps in taps_h:
        rows = _phase_part(kernel, row_taps, axis=0)
        for col_taps in taps_w:
            found = None if rows is None else _phase_part(rows[0], col_taps, axis=1)
            if found is None:  # This phase reads nothing: zeros.
                phases.append(jnp.zeros((b, m_h, m_w, cout), dtype))
                continue
            sub, first_h, first_w = found[0], lo_h + rows[1], lo_w + found[1]
            # Output m of this phase reads inputs m + first .. m + first + taps - 1.
            pad_h = (-first_h, m_h - 1 + first_h + sub.shape[0] - h)
            pad_w = (-first_w, m_w - 1 + first_w + sub.shape[1] - w)
            phases.append(
                jax.lax.conv_general_dilated(
                    x, sub, (1, 1), (pad_h, pad_w), dimension_numbers=_DN_OI, precision=precision
                )
            )
    y = jnp.stack(phases, axis=3).reshape(b, m_h, m_w, sh, sw, cout)
    return _interleave(y, out_h, out_w)


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
) -> jax.Array:
    """Torch `ConvTranspose2d` (no bias): `conv_transpose_phases` from
    `PHASES_FROM_CHANNELS` sub-pixel output channels (s * s * out) on, else
    `conv_transpose_subpixel`. Measured on XLA:CPU (docs/testing.md): per phase is faster
    for a 64 px GMI generator's first two layers (2x and 1.2x for training, 2x and 1.3x for
    an attack) and slower for its last two."""
    wide = kernel.shape[2] * strides[0] * strides[1] >= PHASES_FROM_CHANNELS
    conv = conv_transpose_phases if wide else conv_transpose_subpixel
    return conv(x, kernel, strides, padding, output_padding)


class ConvTranspose(nn.Module):
    """Torch `ConvTranspose2d(in, features, k, s, padding, output_padding, bias)`.

    Parameters `kernel` [kh, kw, features, in] and `bias` [features], exactly as
    `nn.ConvTranspose(features, k, s, transpose_kernel=True)`, which with padding
    `(k - 1 - p, k - 1 - p + op)` computes the same function (slowly on CPU).
    """

    features: int
    kernel_size: tuple[int, int] = (5, 5)
    strides: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (2, 2)
    output_padding: tuple[int, int] = (1, 1)
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            'kernel', self.kernel_init, (*self.kernel_size, self.features, x.shape[-1])
        )
        y = conv_transpose(x, kernel, self.strides, self.padding, self.output_padding)
        if self.use_bias:
            y = y + self.param('bias', nn.initializers.zeros, (self.features,))
        return y


class InstanceNorm(nn.Module):
    """Torch `InstanceNorm2d(C, affine=True, eps)`: per example and channel over H, W."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        scale = self.param('scale', nn.initializers.ones, (c,))
        return y * scale + self.param('bias', nn.initializers.zeros, (c,))


def _l2_normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v), eps)


def _spectral_sigma(module: nn.Module, matrix: jax.Array, train: bool) -> jax.Array:
    """Largest singular value of `matrix` [rows, cols] by torch's power iteration.

    Stores `u` [rows] and `v` [cols] in the 'spectral' collection of `module`; in training
    (outside init) runs one iteration `v = n(W^T u), u = n(W v)` and stores the result.
    Gradients flow through `matrix` only, as in torch.
    """
    rows, cols = matrix.shape
    start = None
    if not module.has_variable(SPECTRAL, 'u'):
        # One draw for both vectors: every random op is a costly compile on XLA:CPU.
        start = jax.random.normal(module.make_rng('params'), (rows + cols,))
    u_var = module.variable(SPECTRAL, 'u', lambda: _l2_normalize(start[:rows]))
    v_var = module.variable(SPECTRAL, 'v', lambda: _l2_normalize(start[rows:]))
    u, v = u_var.value, v_var.value
    if train and not module.is_initializing():
        w = jax.lax.stop_gradient(matrix)
        v = _l2_normalize(w.T @ u)
        u = _l2_normalize(w @ v)
        u_var.value, v_var.value = u, v
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    return jnp.dot(u, matrix @ v)


class SNConv(nn.Module):
    """Spectrally normalised torch `Conv2d(in, features, k, 1, padding)` (stride 1).

    The power-iteration matrix is `kernel.reshape(-1, features).T` [out, kh*kw*in]: `u`
    is torch's `weight_u`; `v` is `weight_v.reshape(in, kh, kw).transpose(1, 2, 0)
    .reshape(-1)`; `kernel` is `weight_orig.transpose(2, 3, 1, 0)`.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: int = 1
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kernel = self.param(
            'kernel', self.kernel_init, (*self.kernel_size, x.shape[-1], self.features)
        )
        sigma = _spectral_sigma(self, kernel.reshape(-1, self.features).T, train)
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x, kernel / sigma, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN
        )
        return y + self.param('bias', nn.initializers.zeros, (self.features,))


class SNDense(nn.Module):
    """Spectrally normalised torch `Linear(in, features)`; kernel [in, features]."""

    features: int
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
        sigma = _spectral_sigma(self, kernel.T, train)
        return x @ (kernel / sigma) + self.param('bias', nn.initializers.zeros, (self.features,))


class SNEmbed(nn.Module):
    """Spectrally normalised torch `Embedding(num_embeddings, features)`; table [N, F]."""

    num_embeddings: int
    features: int
    embedding_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, ids: jax.Array, train: bool) -> jax.Array:
        table = self.param('embedding', self.embedding_init, (self.num_embeddings, self.features))
        sigma = _spectral_sigma(self, table, train)
        return jnp.take(table / sigma, ids, axis=0)


class CategoricalConditionalBatchNorm(nn.Module):
    """BatchNorm (torch semantics, no affine) then a per-class scale and shift.

    Parameters `scale_embed/embedding` [K, C] (init 1) and `bias_embed/embedding` [K, C]
    (init 0), torch's `weights` and `biases` embeddings; statistics in 'batch_stats'.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        h = BatchNorm(use_scale=False, use_bias=False, name='bn')(x, train)
        gamma = nn.Embed(self.num_classes, c, embedding_init=nn.initializers.ones, name='scale')
        beta = nn.Embed(self.num_classes, c, embedding_init=nn.initializers.zeros, name='bias')
        return h * gamma(y)[:, None, None, :] + beta(y)[:, None, None, :]


class MinibatchDiscrimination(nn.Module):
    """Appends `o_b = sum_j exp(-||M_i,b - M_j,b||_1) - 1` per kernel b to the features.

    Parameter `T` [in, out_features, kernel_dims], init N(0, 1) as the original.
    """

    out_features: int = 64
    kernel_dims: int = 50

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = x.shape[-1]
        t = self.param('T', nn.initializers.normal(1.0), (a, self.out_features, self.kernel_dims))
        m = (x @ t.reshape(a, -1)).reshape(-1, self.out_features, self.kernel_dims)
        l1 = jnp.sum(jnp.abs(m[None, :] - m[:, None]), axis=-1)  # [N, N, B]
        o_b = jnp.sum(jnp.exp(-l1), axis=0) - 1.0  # Minus the distance to itself.
        return jnp.concatenate([x, o_b], axis=-1)


def upsample2x_bilinear(x: jax.Array) -> jax.Array:
    """Torch `F.interpolate(x, scale_factor=2, mode='bilinear')` (align_corners=False).

    Each output pixel mixes its nearest input pixel (3/4) and the next one towards it
    (1/4), with edges clamped.
    """

    def up(a, axis):
        n = a.shape[axis]
        prev = jnp.concatenate([jax.lax.slice_in_dim(a, 0, 1, axis=axis), a], axis)
        prev = jax.lax.slice_in_dim(prev, 0, n, axis=axis)
        nxt = jnp.concatenate([a, jax.lax.slice_in_dim(a, n - 1, n, axis=axis)], axis)
        nxt = jax.lax.slice_in_dim(nxt, 1, n + 1, axis=axis)
        even, odd = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
        stacked = jnp.stack([even, odd], axis=axis + 1)
        shape = list(a.shape)
        shape[axis] = 2 * n
        return stacked.reshape(shape)

    return up(up(x, 1), 2)


def avg_pool2x(x: jax.Array) -> jax.Array:
    """Torch `F.avg_pool2d(x, 2)` on NHWC."""
    b, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def flatten_nchw(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C*H*W] in torch's `view(B, -1)` order of an NCHW tensor."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _strided_conv_raw(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    dtype = jnp.result_type(x, kernel)
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), (stride, stride), pads, dimension_numbers=_DN
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def strided_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Torch `Conv2d` (no bias) of stride > 1 whose input gradient is `conv_transpose`.

    The same forward as `lax.conv_general_dilated`. XLA:CPU computes the input gradient of a
    strided convolution (an lhs-dilated convolution) by a slow path for some shapes: for the
    GMI critic's last one (8x8 -> 4x4, 256 -> 512 channels, k5 s2 p2, batch 8) it took 0.50 s
    against 0.04 s for the same transposed convolution done sub-pixel (equal to 1.2e-6
    relative). The kernel gradient is JAX's own; second derivatives (the gradient penalty)
    differentiate this rule.

    Args:
      x: [B, H, W, Cin].
      kernel: [k, k, Cin, Cout] (flax's `nn.Conv` layout).
      stride: s > 1 (both axes).
      padding: torch `padding` (both axes, symmetric).
    """
    return _strided_conv_raw(x, kernel, stride, padding)


def _strided_conv_fwd(x, kernel, stride, padding):
    # `strided_conv` itself, not the raw convolution: a derivative of this forward (the
    # gradient penalty differentiates the input gradient again) then also goes through this
    # rule instead of XLA's slow lhs-dilated input gradient.
    return strided_conv(x, kernel, stride, padding), (x, kernel)


def _strided_conv_bwd(stride, padding, residuals, ct):
    x, kernel = residuals
    k = kernel.shape[0]
    # The transposed convolution back to [H, W]: output_padding restores what the stride cut.
    extra = [x.shape[i] - ((ct.shape[i] - 1) * stride - 2 * padding + k) for i in (1, 2)]
    dx = conv_transpose(ct, kernel, (stride, stride), (padding, padding), extra)
    _, kernel_vjp = jax.vjp(lambda w: _strided_conv_raw(x, w, stride, padding), kernel)
    return dx.astype(x.dtype), kernel_vjp(ct)[0]


strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


class StridedConv(nn.Module):
    """`nn.Conv` (same variables, initialisers and layout) of stride > 1 via `strided_conv`.

    Attributes:
      features: output channels.
      kernel_size: k (square).
      stride: s > 1.
      padding: torch `padding` (symmetric).
    """

    features: int
    kernel_size: int
    stride: int
    padding: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            'kernel', nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
        )
        bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
        y = strided_conv(x, kernel, self.stride, self.padding)
        return y + bias.astype(y.dtype)


def torch_conv(
    features: int, kernel: int, stride: int, padding: int, name: str | None = None
) -> nn.Module:
    """Torch `Conv2d(in, features, kernel, stride, padding)` with bias (`StridedConv` when
    stride > 1; the variables are `nn.Conv`'s either way)."""
    if stride > 1:
        return StridedConv(features, kernel, stride, padding, name=name)
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=((padding, padding), (padding, padding)),
        name=name,
    )
