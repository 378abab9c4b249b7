"""The operations of the StyleGAN2 synthesis network, in NHWC: FIR resampling, modulated
convolution, bias + activation.

They follow `torch_utils/ops` of NVlabs/stylegan2-ada-pytorch (`upfirdn2d`,
`conv2d_resample`, `bias_act`) and `modulated_conv2d` of `training/networks.py`:

- **FIR filter.** A 1-D list of taps `t` ([1, 3, 3, 1] in every released model) becomes the
  2-D filter `outer(t, t) / sum(t)**2` (`upfirdn2d.setup_filter`); a `gain` scales it.
  `upfirdn2d` *convolves* with it (the filter is flipped before the correlation; the
  symmetric [1, 3, 3, 1] does not care, other taps do).
- **upfirdn2d** (without down-sampling): insert `up - 1` zeros after every pixel, pad
  `(p0, p1)` on each spatial side, convolve with the filter. `upsample2d` is
  `upfirdn2d(up=2, padding=((fw + 1) // 2, (fw - 2) // 2), gain=4)`: the output is exactly
  twice the input side.
- **Modulated convolution.** The input channels are scaled by the styles, the (shared) kernel
  is applied, and with demodulation each output channel of sample b is scaled by
  `rsqrt(sum_{kh,kw,i} (kernel * style_b,i)**2 + 1e-8)`. This is the original's
  `fused_modconv=False` form (the one it uses in training and in float16); the fused form
  (a grouped convolution with per-sample kernels) equals it in exact arithmetic, and the
  tests check both against each other through a PyTorch reference.
- **Up-sampling convolution** (`up=2`, `conv2d_resample`): a stride-2 transposed
  convolution (zeros inserted between the pixels, the kernel flipped, `k - 1` padding) and
  then the FIR filter with gain 4 and what is left of the padding, `(1, 1)` for a 3x3 kernel
  and 4 taps; a `R x R` input gives `2R x 2R`.
- **bias_act**: add the bias, leaky ReLU (slope 0.2) times sqrt(2) for 'lrelu' (none for
  'linear'), then clamp to `[-clamp, clamp]` if a clamp is set (`conv_clamp`).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def upfirdn2d(
    x: jax.Array,
    taps: Sequence[float],
    up: int = 1,
    padding: tuple[int, int] = (0, 0),
    gain: float = 1.0,
) -> jax.Array:
    """Zero-insertion up-sampling, padding and FIR convolution, per channel.

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
    channels = x.shape[-1]
    f = fir_filter(taps, gain)[::-1, ::-1]  # Convolution, not correlation.
    kernel = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, channels)), x.dtype)
    # lhs_dilation puts up - 1 zeros *between* pixels; the ones after the last pixel are the
    # extra `up - 1` of padding.
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((p0, p1 + up - 1), (p0, p1 + up - 1)),
        lhs_dilation=(up, up),
        dimension_numbers=_DN,
        feature_group_count=channels,
    )


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
        y = jax.lax.conv_general_dilated(
            x,
            kernel[::-1, ::-1],
            (1, 1),
            ((k - 1, k - 1), (k - 1, k - 1)),
            lhs_dilation=(up, up),
            dimension_numbers=_DN,
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
