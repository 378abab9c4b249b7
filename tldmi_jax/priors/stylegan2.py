"""StyleGAN2(-ADA) generator (Karras et al. 2020), the image prior of PPA.

A Flax (linen, NHWC) transcription of `training/networks.py` of NVlabs/stylegan2-ada-pytorch
(`Generator` = `MappingNetwork` + `SynthesisNetwork` with the 'skip' architecture), built so
that the released `ffhq.pkl` (1024 px) and `afhqdog.pkl` (512 px) convert tensor for tensor
(`tldmi_jax.interop.stylegan2`):

- **Mapping** z [B, z_dim] -> w: z scaled to unit second moment (`z * rsqrt(mean(z**2) +
  1e-8)`), then `mapping_layers` fully connected layers with leaky ReLU (slope 0.2, gain
  sqrt(2)). As in the original the stored kernel is the raw parameter and the learning-rate
  multiplier is folded in at run time: `x @ (kernel * lr / sqrt(fan_in)) + bias * lr`
  (`mapping_lr` = 0.01). w is broadcast to `num_ws` layers and truncated towards `w_avg`
  (a 'buffers' variable, the original's tracked average; this model is inference-only and
  does not update it): `w_avg + psi * (w - w_avg)` on the layers below `cutoff` (all if None).
- **Synthesis** ws [B, num_ws, w_dim] (or [B, w_dim], broadcast) -> images: a learned 4x4
  constant, then per resolution 8, 16, ... a 2x up-sampling modulated 3x3 convolution
  (`conv0`) and a modulated 3x3 convolution (`conv1`), each with per-pixel noise times a
  learned strength, bias, leaky ReLU and the `conv_clamp` clamp; each block's `torgb` (a
  modulated 1x1 convolution without demodulation, bias, clamp) is added to the FIR
  up-sampled image of the block below (`stylegan2_ops`). Widths are
  `min(channel_base // res, channel_max)`; block `b{res}` reads ws `[i, i + n_conv]` (its
  convolutions, then its toRGB, which shares its w with the next block's first conv).
  `num_ws = 2 * log2(resolution) - 2` (18 at 1024 px).
- **Noise** `noise_mode`: 'const' adds the stored `noise_const` buffers (deterministic;
  PPA's setting), 'random' draws fresh noise from the 'noise' RNG stream, 'none' adds none.

Variables: 'params' hold the weights (kernels HWIO / [in, out], the constant [4, 4, C],
`noise_strength` [1]); 'buffers' hold `mapping/w_avg` [w_dim] and the
`noise_const` [res, res] of every convolution. The FIR filter is a constant, not a variable.

Not covered: class-conditional models (`c_dim > 0`; converting one is refused), the 'orig'
and 'resnet' architectures, other activations; the original's float16 layers
(`num_fp16_res`) run here in float32, as PPA runs them (`force_fp32=True`).

Example::

    g = Generator(z_dim=512, w_dim=512, img_resolution=1024)
    ws = g.apply(variables, z, 0.5, 8, method='map')  # psi 0.5, cutoff 8: [B, 18, 512]
    raw = g.apply(variables, ws, method='synthesize')  # [B, 1024, 1024, 3], about [-1, 1]
    images = to_images(raw, crop=800, size=224)  # PPA's view of a face: [B, 224, 224, 3]
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.priors import stylegan2_ops as ops

KIND = 'stylegan2'  # Its options: `config_lib.prior_options('stylegan2')`.
NOISE_MODES = ('const', 'random', 'none')
NORMALIZE_EPS = 1e-8


def block_resolutions(img_resolution: int) -> list[int]:
    """The resolutions of the synthesis blocks: 4, 8, ..., `img_resolution` (a power of 2)."""
    log2 = int(round(math.log2(img_resolution))) if img_resolution > 0 else 0
    if img_resolution < 4 or 2**log2 != img_resolution:
        raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}.')
    return [2**i for i in range(2, log2 + 1)]


def num_ws(img_resolution: int) -> int:
    """How many w vectors the synthesis network reads: one per convolution, plus the last
    toRGB (`2 * log2(img_resolution) - 2`)."""
    return 2 * len(block_resolutions(img_resolution))


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Feature maps of the block at `res`: `min(channel_base // res, channel_max)`."""
    return min(channel_base // res, channel_max)


def truncate(
    ws: jax.Array, w_avg: jax.Array, psi: float | jax.Array = 1.0, cutoff: int | None = None
) -> jax.Array:
    """The truncation trick: `w_avg + psi * (ws - w_avg)` on the layers below `cutoff`.

    Args:
      ws: [B, num_ws, w_dim].
      w_avg: [w_dim].
      psi: truncation strength (a Python 1 returns `ws` unchanged; 0 gives `w_avg`). May
        be traced.
      cutoff: layers `0 .. cutoff - 1` are truncated; None truncates all.

    Returns:
      [B, num_ws, w_dim].
    """
    if isinstance(psi, int | float) and psi == 1:
        return ws
    mixed = w_avg + psi * (ws - w_avg)
    if cutoff is None:
        return mixed
    layers = jnp.arange(ws.shape[-2])[:, None] < cutoff
    return jnp.where(layers, mixed, ws)


def to_images(
    raw: jax.Array, *, crop: int | None = None, size: int | None = None, clip: bool = True
) -> jax.Array:
    """Generator output -> images for a classifier (PPA's post-processing).

    `(raw + 1) / 2` maps the generator's range [-1, 1] onto [0, 1] (then clipped, unless
    `clip=False`: PPA's attack config feeds unclipped images, `clip: false`); a center
    crop of `crop` x `crop` pixels (torchvision's `center_crop`: the top-left corner at
    `round((R - crop) / 2)`); a resize to `size` x `size` with the antialiased bilinear
    (triangle) filter of torchvision's `resize(..., antialias=True)` (`jax.image.resize`
    'linear'). PPA's faces: `crop=800, size=224` of FFHQ's 1024 px.

    Args:
      raw: [B, R, R, C], the generator's output.
      crop: side of the center crop (None: no crop).
      size: output side (None: no resize).
      clip: clip to [0, 1].

    Returns:
      [B, S, S, C] float32, in [0, 1] if `clip`.
    """
    x = (raw.astype(jnp.float32) + 1.0) * 0.5
    if clip:
        x = jnp.clip(x, 0.0, 1.0)
    if crop is not None:
        h, w = x.shape[1:3]
        if not 0 < crop <= min(h, w):
            raise ValueError(f'crop={crop} must be in 1..{min(h, w)} for {h}x{w} images.')
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        x = x[:, top : top + crop, left : left + crop]
    if size is not None and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), 'linear', antialias=True)
    return x


def _normal(scale: float = 1.0):
    """N(0, scale**2) in float32 (also under JAX_ENABLE_X64)."""
    return lambda key, shape: jax.random.normal(key, shape, jnp.float32) * scale


class FullyConnected(nn.Module):
    """`FullyConnectedLayer`: `x @ (kernel * lr / sqrt(fan_in)) + bias * lr`, then 'lrelu'.

    Attributes:
      features: output width.
      lr_multiplier: learning-rate multiplier (the kernel is initialised N(0, 1) / lr).
      bias_init: initial bias (1 for the style affines: unit styles at init).
      act: apply leaky ReLU * sqrt(2).
    """

    features: int
    lr_multiplier: float = 1.0
    bias_init: float = 0.0
    act: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param('kernel', _normal(1.0 / self.lr_multiplier), (fan_in, self.features))
        bias = self.param('bias', nn.initializers.constant(self.bias_init), (self.features,))
        y = x @ (kernel * (self.lr_multiplier / math.sqrt(fan_in))) + bias * self.lr_multiplier
        return ops.lrelu(y) if self.act else y


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> ws [B, num_ws, w_dim] (normalised, MLP, broadcast, truncated)."""

    w_dim: int
    num_ws: int
    num_layers: int = 8
    layer_features: int | None = None  # Hidden width; None = w_dim.
    lr_multiplier: float = 0.01

    @nn.compact
    def __call__(
        self, z: jax.Array, psi: float | jax.Array = 1.0, cutoff: int | None = None
    ) -> jax.Array:
        x = z.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + NORMALIZE_EPS)
        hidden = self.layer_features or self.w_dim
        for i in range(self.num_layers):
            width = self.w_dim if i == self.num_layers - 1 else hidden
            x = FullyConnected(width, self.lr_multiplier, act=True, name=f'fc{i}')(x)
        w_avg = self.variable('buffers', 'w_avg', jnp.zeros, (self.w_dim,), jnp.float32)
        ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
        return truncate(ws, w_avg.value, psi, cutoff)


class SynthesisLayer(nn.Module):
    """`SynthesisLayer`: modulated (demodulated) 3x3 conv, noise, bias, lrelu, clamp."""

    features: int
    resolution: int
    up: int = 1
    conv_clamp: float | None = None
    resample_filter: tuple[float, ...] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str = 'const') -> jax.Array:
        in_features = x.shape[-1]
        styles = FullyConnected(in_features, bias_init=1.0, name='affine')(w)
        kernel = self.param('kernel', _normal(), (3, 3, in_features, self.features))
        x = ops.modulated_conv(x, kernel, styles, up=self.up, taps=self.resample_filter)
        res = self.resolution
        noise_const = self.variable(
            'buffers',
            'noise_const',
            lambda: jax.random.normal(self.make_rng('params'), (res, res), jnp.float32),
        )
        # [1], not the original's []: orbax restores 0-d arrays as [1].
        strength = self.param('noise_strength', nn.initializers.zeros, (1,))
        if noise_mode == 'random':
            noise = jax.random.normal(self.make_rng('noise'), (x.shape[0], res, res, 1))
            x = x + noise.astype(x.dtype) * strength
        elif noise_mode == 'const':
            x = x + (noise_const.value * strength)[None, :, :, None].astype(x.dtype)
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        return ops.bias_act(x, bias, act=True, clamp=self.conv_clamp)


class ToRGB(nn.Module):
    """`ToRGBLayer`: modulated 1x1 conv (styles / sqrt(fan_in), no demodulation), bias, clamp."""

    channels: int = 3
    conv_clamp: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        styles = FullyConnected(in_features, bias_init=1.0, name='affine')(w)
        styles = styles * (1.0 / math.sqrt(in_features))
        kernel = self.param('kernel', _normal(), (1, 1, in_features, self.channels))
        x = ops.modulated_conv(x, kernel, styles, demodulate=False)
        bias = self.param('bias', nn.initializers.zeros, (self.channels,))
        return ops.bias_act(x, bias, act=False, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' architecture: (const | conv0 up), conv1, torgb."""

    features: int
    resolution: int
    channels: int = 3
    conv_clamp: float | None = None
    resample_filter: tuple[float, ...] = (1, 3, 3, 1)

    @nn.compact
    def __call__(
        self, x: jax.Array | None, img: jax.Array | None, ws: jax.Array, noise_mode: str
    ) -> tuple[jax.Array, jax.Array]:

        def layer(name: str, up: int = 1) -> SynthesisLayer:
            return SynthesisLayer(
                self.features, self.resolution, up, self.conv_clamp, self.resample_filter, name=name
            )

        if x is None:
            shape = (self.resolution, self.resolution, self.features)
            const = self.param('const', _normal(), shape)
            x = jnp.broadcast_to(const, (ws.shape[0], *shape))
            x = layer('conv1')(x, ws[:, 0], noise_mode)
            i = 1
        else:
            x = layer('conv0', up=2)(x, ws[:, 0], noise_mode)
            x = layer('conv1')(x, ws[:, 1], noise_mode)
            i = 2
        y = ToRGB(self.channels, self.conv_clamp, name='torgb')(x, ws[:, i])
        img = y if img is None else ops.upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] (or [B, w_dim]) -> images [B, R, R, channels], about [-1, 1]."""

    img_resolution: int
    channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    resample_filter: tuple[float, ...] = (1, 3, 3, 1)

    @property
    def num_ws(self) -> int:
        return num_ws(self.img_resolution)

    @nn.compact
    def __call__(self, ws: jax.Array, noise_mode: str = 'const') -> jax.Array:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f'noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.')
        ws = jnp.asarray(ws, jnp.float32)
        if ws.ndim == 2:
            ws = jnp.broadcast_to(ws[:, None, :], (ws.shape[0], self.num_ws, ws.shape[-1]))
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f'ws must be [B, w_dim] or [B, {self.num_ws}, w_dim], got {ws.shape}.')
        x = img = None
        first = 0
        for res in block_resolutions(self.img_resolution):
            n_conv = 1 if res == 4 else 2
            x, img = SynthesisBlock(
                channels_at(res, self.channel_base, self.channel_max),
                res,
                self.channels,
                self.conv_clamp,
                self.resample_filter,
                name=f'b{res}',
            )(x, img, ws[:, first : first + n_conv + 1], noise_mode)
            first += n_conv
        return img


class Generator(nn.Module):
    """z [B, z_dim] -> images [B, R, R, channels] (about [-1, 1]; see `to_images`).

    Attributes:
      z_dim: latent size (512 in the released models).
      w_dim: intermediate latent size (512).
      img_resolution: output side, a power of two >= 4 (1024 FFHQ, 512 AFHQ-Dog).
      channels: image channels.
      mapping_layers: fully connected layers of the mapping network (8).
      layer_features: hidden width of the mapping network (None = w_dim).
      mapping_lr: the mapping network's learning-rate multiplier (0.01).
      channel_base, channel_max: widths `min(channel_base // res, channel_max)`.
      conv_clamp: clamp of the convolution outputs (None = none; 256 in the ADA configs).
      resample_filter: FIR taps of the up-sampling.
    """

    z_dim: int = 512
    w_dim: int = 512
    img_resolution: int = 1024
    channels: int = 3
    mapping_layers: int = 8
    layer_features: int | None = None
    mapping_lr: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    resample_filter: Sequence[float] = (1, 3, 3, 1)

    @property
    def num_ws(self) -> int:
        return num_ws(self.img_resolution)

    def setup(self):
        self.mapping = MappingNetwork(
            self.w_dim, self.num_ws, self.mapping_layers, self.layer_features, self.mapping_lr
        )
        self.synthesis = SynthesisNetwork(
            self.img_resolution,
            self.channels,
            self.channel_base,
            self.channel_max,
            self.conv_clamp,
            tuple(self.resample_filter),
        )

    def __call__(
        self,
        z: jax.Array,
        psi: float | jax.Array = 1.0,
        cutoff: int | None = None,
        noise_mode: str = 'const',
    ) -> jax.Array:
        """Images [B, R, R, channels] from z [B, z_dim] (`map`, then `synthesize`)."""
        return self.synthesize(self.map(z, psi, cutoff), noise_mode)

    def map(
        self, z: jax.Array, psi: float | jax.Array = 1.0, cutoff: int | None = None
    ) -> jax.Array:
        """ws [B, num_ws, w_dim] from z [B, z_dim], truncated (see `truncate`)."""
        if z.ndim != 2 or z.shape[-1] != self.z_dim:
            raise ValueError(f'z must be [B, {self.z_dim}], got {z.shape}.')
        return self.mapping(z, psi, cutoff)

    def synthesize(self, ws: jax.Array, noise_mode: str = 'const') -> jax.Array:
        """Images from ws [B, num_ws, w_dim] or [B, w_dim] (broadcast to every layer).

        `noise_mode='random'` needs a 'noise' RNG (`apply(..., rngs={'noise': key})`).
        """
        return self.synthesis(ws, noise_mode)

    def w_avg(self) -> jax.Array:
        """The tracked average w [w_dim] (the truncation centre)."""
        return self.mapping.variables['buffers']['w_avg']


def build(num_classes: int, image_size: int, **kw) -> tuple[nn.Module, None]:
    """The generator (a converted StyleGAN2 has no discriminator: PPA weighs its loss 0)."""
    if num_classes:
        raise ValueError('The StyleGAN2 prior is unconditional (c_dim = 0); num_classes must be 0.')
    block_resolutions(image_size)
    g = Generator(
        z_dim=kw['z_dim'],
        w_dim=kw['w_dim'],
        img_resolution=image_size,
        channels=kw['channels'],
        mapping_layers=kw['mapping_layers'],
        layer_features=kw['layer_features'],
        mapping_lr=float(kw['mapping_lr']),
        channel_base=kw['channel_base'],
        channel_max=kw['channel_max'],
        conv_clamp=kw['conv_clamp'],
        resample_filter=tuple(float(t) for t in kw['resample_filter']),
    )
    return g, None


def init(
    g: nn.Module, d: None, key: jax.Array, *, z_dim: int, image_size: int, num_classes: int
) -> dict:
    """Fresh variables {'generator': {'params', 'buffers'}}."""
    del d, image_size, num_classes
    return {'generator': g.init(key, jnp.zeros((1, z_dim), jnp.float32))}
