"""The operations of the StyleGAN2 synthesis network, in NHWC: FIR resampling, modulated
convolution, bias + activation.

They follow `torch_utils/ops` of NVlabs/stylegan2-ada-pytorch (`upfirdn2d`,
`conv2d_resample`, `bias_act`) and `modulated_conv2d` of `training/networks.py`:

- **FIR filter.** A 1-D list of taps `t` ([1, 3, 3, 1] in every released model) becomes the
  2-D filter `outer(t, t) / sum(t)**2` (`upfirdn2d.setup_filter`); a `gain` scales it.
  `upfirdn2d` *convolves* with it (the filter is flipped before the correlation; the
  symmetric [1, 3, 3, 1] does not care, other taps do).
- **upfirdn2d** (without down-sampling): insert `up - 1` zeros after every pixel, pad
  `(p0, p1)` on each spatial side, convolve with the filter (as two 1-D passes: the filter
  is separable). `upsample2d` is
  `upfirdn2d(up=2, padding=((fw + 1) // 2, (fw - 2) // 2), gain=4)`: the output is exactly
  twice the input side.
- **Modulated convolution.** The input channels are scaled by the styles, the (shared) kernel
  is applied, and with demodulation each output channel of sample b is scaled by
  `rsqrt(sum_{kh,kw,i} (kernel * style_b,i)**2 + 1e-8)`. This is the original's
  `fused_modconv=False` form (the one it uses in training and in float16); the fused form
  (a grouped convolution with per-sample kernels) equals it in exact arithmetic, and the
  tests check both against each other through a PyTorch reference.
- **Up-sampling convolution** (`up=2`, `conv2d_resample`): a stride-2 transposed
  convolution (equal to zeros inserted between the pixels, the kernel flipped, `k - 1`
  padding; computed sub-pixel by `layers.conv_transpose_subpixel`) and then the FIR filter
  with gain 4 and what is left of the padding, `(1, 1)` for a 3x3 kernel and 4 taps; a
  `R x R` input gives `2R x 2R`.
- **bias_act**: add the bias, leaky ReLU (slope 0.2) times sqrt(2) for 'lrelu' (none for
  'linear'), then clamp to `[-clamp, clamp]` if a clamp is set (`conv_clamp`).
"""

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tldmi_jax.priors import layers

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # `bias_act.activation_funcs['lrelu'].def_gain`.
DEMOD_EPS = 1e-8
_DN = ('NHWC', 'HWIO', 'NHWC')


def fir_filter(taps: Sequence[float], gain: float = 1.0) -> np.ndarray:
    """The 2-D FIR filter of `taps`: `outer(t, t) / sum(t)**2 * gain`, [fh, fw] float32."""
    t = np.asarray(taps, np.float64)
    if t.ndim != 1 or t.size == 0 or t.sum() == 0:
        raise ValueError(f'FIR taps must be a non-empty 1-D list with a non-zero sum, got {taps}')
    f = np.outer(t, t)
    return (f / f.sum() * gain).astype(np.float32)


def _fir_valid(x: jax.Array, taps_h: tuple, taps_w: tuple) -> jax.Array:
    """'Valid' correlation of [B, H, W, C] with the separable filter outer(taps_h, taps_w)."""
    fh, fw = len(taps_h), len(taps_w)
    h, w = x.shape[1] - fh + 1, x.shape[2] - fw + 1
    y = sum(x[:, j : j + h] * t for j, t in enumerate(taps_h))
    return sum(y[:, :, j : j + w] * t for j, t in enumerate(taps_w))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _fir(x: jax.Array, taps_h: tuple, taps_w: tuple) -> jax.Array:
    """`_fir_valid` whose gradient is the same kind of correlation (flipped taps over the
    cotangent padded by the filter size), not the pads and adds of its slices."""
    return _fir_valid(x, taps_h, taps_w)


def _fir_fwd(x, taps_h, taps_w):
    return _fir(x, taps_h, taps_w), None


def _fir_bwd(taps_h, taps_w, _, ct):
    ph, pw = len(taps_h) - 1, len(taps_w) - 1
    ct = jnp.pad(ct, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    return (_fir(ct, taps_h[::-1], taps_w[::-1]),)


_fir.defvjp(_fir_fwd, _fir_bwd)


def _insert_zeros(x: jax.Array, up: int) -> jax.Array:
    """`up - 1` zeros after every pixel on both spatial axes: [B, H, W, C] -> [B, uH, uW, C]."""
    b, h, w, c = x.shape
    zeros = jnp.zeros_like(x)
    x = jnp.stack([x] + [zeros] * (up - 1), axis=2).reshape(b, h * up, w, c)
    zeros = jnp.zeros_like(x)
    return jnp.stack([x] + [zeros] * (up - 1), axis=3).reshape(b, h * up, w * up, c)


def upfirdn2d(
    x: jax.Array,
    taps: Sequence[float],
    up: int = 1,
    padding: tuple[int, int] = (0, 0),
    gain: float = 1.0,
) -> jax.Array:
    """Zero-insertion up-sampling, padding and FIR convolution, per channel.

    The filter `fir_filter(taps, gain)` is separable, so it runs as two 1-D passes of shifted
    slices (equal up to float rounding): XLA:CPU ran the per-channel (grouped) convolution
    of the 2-D filter 10-60x slower (52 ms against 0.8 ms at 2 x 129 x 129 x 64; in PPA's
    256 px synthesis it was the largest cost of the step).

    Args:
      x: [B, H, W, C].
      taps: the 1-D filter taps (see `fir_filter`).
      up: up-sampling factor (`up - 1` zeros after every pixel).
      padding: `(before, after)` zeros on both spatial axes, after the up-sampling (>= 0).
      gain: the filter's gain (`up**2` keeps the mean for up-sampling).

    Returns:
      [B, H * up + p0 + p1 - fh + 1, ..., C].
    """
    p0, p1 = padding
    if p0 < 0 or p1 < 0:
        raise ValueError(f'upfirdn2d: negative padding {padding} is not supported')
    fir_filter(taps, gain)  # Checks the taps.
    t = np.asarray(taps, np.float64)
    t = (t / t.sum())[::-1]  # Convolution, not correlation.
    taps_h = tuple(float(v) * gain for v in t)  # The gain once, on the first pass.
    taps_w = tuple(float(v) for v in t)
    if up > 1:
        x = _insert_zeros(x, up)
    x = jnp.pad(x, ((0, 0), (p0, p1), (p0, p1), (0, 0)))
    return _fir(x, taps_h, taps_w)


def upsample2d(x: jax.Array, taps: Sequence[float]) -> jax.Array:
    """2x FIR up-sampling (`upfirdn2d.upsample2d`): [B, H, W, C] -> [B, 2H, 2W, C]."""
    fw = len(taps)
    return upfirdn2d(x, taps, up=2, padding=((fw + 1) // 2, (fw - 2) // 2), gain=4.0)


def demodulation(kernel: jax.Array, styles: jax.Array) -> jax.Array:
    """`rsqrt(sum_{kh,kw,i} (kernel * styles_b,i)**2 + 1e-8)`: [B, O] from kernel [kh, kw,
    I, O] and styles [B, I]."""
    energy = jnp.einsum('bi,io->bo', jnp.square(styles), jnp.sum(jnp.square(kernel), axis=(0, 1)))
    return jax.lax.rsqrt(energy + DEMOD_EPS)


def modulated_conv(
    x: jax.Array,
    kernel: jax.Array,
    styles: jax.Array,
    *,
    demodulate: bool = True,
    up: int = 1,
    taps: Sequence[float] = (1, 3, 3, 1),
) -> jax.Array:
    """A modulated convolution (`modulated_conv2d` of the original, padding `k // 2`).

    Args:
      x: [B, H, W, I].
      kernel: [k, k, I, O] (the original's `weight` [O, I, k, k], transposed).
      styles: [B, I].
      demodulate: scale each output channel to unit expected magnitude.
      up: 1, or 2 for the up-sampling convolution (`taps` is its FIR filter).
      taps: FIR taps of the up-sampling.

    Returns:
      [B, H * up, W * up, O].
    """
    k = kernel.shape[0]
    x = x * styles[:, None, None, :].astype(x.dtype)
    if up == 1:
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((k // 2, k // 2), (k // 2, k // 2)), dimension_numbers=_DN
        )
    else:
        # conv2d_resample: the padding k // 2 plus the filter's, less what the transposed
        # convolution already covers.
        fw = len(taps)
        p0 = k // 2 + (fw + up - 1) // 2 - (k - 1)
        p1 = k // 2 + (fw - up) // 2 - (k - up)
        # The stride-`up` transposed convolution (torch's conv_transpose2d, no padding) done
        # sub-pixel: XLA:CPU runs the equivalent lhs-dilated convolution far slower.
        y = layers.conv_transpose_subpixel(
            x, kernel.transpose(0, 1, 3, 2), (up, up), (0, 0), (0, 0)
        )
        y = upfirdn2d(y, taps, padding=(p0, p1), gain=float(up * up))
    if demodulate:
        y = y * demodulation(kernel, styles)[:, None, None, :].astype(y.dtype)
    return y


def lrelu(x: jax.Array) -> jax.Array:
    """Leaky ReLU (slope 0.2) times sqrt(2), the original's 'lrelu' with its default gain."""
    return jnp.where(x >= 0, x, x * LRELU_SLOPE) * LRELU_GAIN


def bias_act(
    x: jax.Array, bias: jax.Array, *, act: bool = True, clamp: float | None = None
) -> jax.Array:
    """`bias_act`: `x + bias`, then 'lrelu' (if `act`) and the clamp to `[-clamp, clamp]`."""
    x = x + bias.astype(x.dtype)
    if act:
        x = lrelu(x)
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x
