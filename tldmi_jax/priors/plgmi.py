"""PLG-MI prior (Yuan et al., AAAI 2023): an SNGAN-style conditional GAN.

`ResNetGenerator` is `models/generators/resnet64.py` of `LetheSec/PLG-MI-Attack`:
Linear(z -> 16*nf*4*4) -> view NCHW -> 4 residual up-blocks 16nf -> 8nf -> 4nf -> 2nf -> nf
(each: CBN(y) -> ReLU -> bilinear 2x -> conv3x3 -> CBN(y) -> ReLU -> conv3x3, shortcut
bilinear 2x -> conv1x1; CBN = BatchNorm without affine + per-class scale/shift) ->
BN -> ReLU -> conv1x1 -> tanh (17,973,379 parameters with 1000 classes, nf 64, z 128).

`SNResNetProjectionDiscriminator` is `models/discriminators/snresnet64.py`: an optimized
down-block 3 -> nf, then 4 down-blocks to 16nf (residual: ReLU -> conv3x3 (in -> in) ->
ReLU -> conv3x3 (in -> out) -> avgpool; shortcut conv1x1 -> avgpool), ReLU, global sum
pooling, Linear(16nf -> 1) + <embed(y), h> (projection); every layer spectrally normalised
(11,165,441 parameters with 1000 classes, nf 64). Power-iteration vectors are in the
'spectral' collection; `train=True` runs one iteration per call, as torch does in training.

Output range. The original ends in `tanh` and treats the result as an image in [0, 1]
(its real images are `ToTensor()` in [0, 1]). The default `out_act='unit'` returns
`(tanh(h) + 1) / 2`, always in [0, 1]; `out_act='tanh'` returns the raw `tanh(h)` of the
original code (use it with converted PLG-MI checkpoints).

Also here, for both GAN training and the PLG-MI attack: `max_margin_loss` and `augment`
(the Kornia augmentation the original applies to generated images).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.layers import BatchNorm
from tldmi_jax.priors import layers

KIND = 'plgmi'  # Its options: `config_lib.prior_options('plgmi')`.

_XAVIER_RELU = nn.initializers.variance_scaling(2.0, 'fan_avg', 'uniform')  # gain sqrt(2)
_XAVIER = nn.initializers.xavier_uniform()


class GenBlock(nn.Module):
    """Residual up-block with class-conditional BatchNorm (plain BN when unconditional)."""

    features: int
    num_classes: int

    def _norm(self, name, x, y, train):
        if self.num_classes > 0:
            return layers.CategoricalConditionalBatchNorm(self.num_classes, name=name)(x, y, train)
        return BatchNorm(name=name)(x, train)

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None, train: bool) -> jax.Array:
        sc = nn.Conv(self.features, (1, 1), name='c_sc')(layers.upsample2x_bilinear(x))
        h = nn.relu(self._norm('b1', x, y, train))
        h = nn.Conv(self.features, (3, 3), padding=1, name='c1')(layers.upsample2x_bilinear(h))
        h = nn.relu(self._norm('b2', h, y, train))
        return sc + nn.Conv(self.features, (3, 3), padding=1, name='c2')(h)


class ResNetGenerator(nn.Module):
    """Conditional ResNet generator: (z [B, z_dim], y int [B]) -> images [B, S, S, 3].

    Attributes:
      num_classes: K (0: unconditional, plain BatchNorm).
      num_features: nf (64).
      image_size: output side, bottom_width * 2**n (64: 4 blocks).
      bottom_width: side of the first feature map (4).
      out_act: 'unit' (default, images in [0, 1]) or 'tanh' (the original's raw output).
      channels: output channels (3; 1 for grayscale data).
    """

    num_classes: int
    num_features: int = 64
    image_size: int = 64
    bottom_width: int = 4
    out_act: str = 'unit'
    channels: int = 3

    @nn.compact
    def __call__(self, z: jax.Array, y: jax.Array | None = None, train: bool = False):
        n = int(round(math.log2(self.image_size / self.bottom_width)))
        if n < 1 or self.bottom_width * 2**n != self.image_size:
            raise ValueError(
                f'image_size {self.image_size} is not bottom_width {self.bottom_width} * 2**n.'
            )
        if self.num_classes > 0 and y is None:
            raise ValueError('A conditional generator needs labels y.')
        width, bw = self.num_features * 2**n, self.bottom_width
        h = nn.Dense(width * bw * bw, name='l1')(z)
        h = h.reshape(z.shape[0], width, bw, bw).transpose(0, 2, 3, 1)
        for i in range(n):
            width //= 2
            h = GenBlock(width, self.num_classes, name=f'block{i + 2}')(h, y, train)
        h = nn.relu(BatchNorm(name='b6')(h, train))
        h = jnp.tanh(nn.Conv(self.channels, (1, 1), name='conv6')(h))
        if self.out_act == 'unit':
            return 0.5 * (h + 1.0)
        if self.out_act == 'tanh':
            return h
        raise ValueError(f"out_act must be 'unit' or 'tanh', got {self.out_act!r}.")


class DisBlock(nn.Module):
    """Spectrally normalised residual down-block (`optimized`: the first block)."""

    features: int
    optimized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c_sc = layers.SNConv(self.features, (1, 1), 0, _XAVIER, name='c_sc')
        if self.optimized:
            c1 = layers.SNConv(self.features, kernel_init=_XAVIER_RELU, name='c1')
            c2 = layers.SNConv(self.features, kernel_init=_XAVIER_RELU, name='c2')
            sc = c_sc(layers.avg_pool2x(x), train)
            return sc + layers.avg_pool2x(c2(nn.relu(c1(x, train)), train))
        c1 = layers.SNConv(x.shape[-1], kernel_init=_XAVIER_RELU, name='c1')
        c2 = layers.SNConv(self.features, kernel_init=_XAVIER_RELU, name='c2')
        sc = layers.avg_pool2x(c_sc(x, train))
        h = c2(nn.relu(c1(nn.relu(x), train)), train)
        return sc + layers.avg_pool2x(h)


class SNResNetProjectionDiscriminator(nn.Module):
    """Projection discriminator: (images [B, S, S, 3], y int [B]) -> scores [B].

    Attributes:
      num_classes: K (0: no projection term).
      num_features: nf (64).
    """

    num_classes: int
    num_features: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None, train: bool = False):
        nf = self.num_features
        h = DisBlock(nf, optimized=True, name='block1')(x, train)
        for i, mult in enumerate((2, 4, 8, 16)):
            h = DisBlock(nf * mult, name=f'block{i + 2}')(h, train)
        h = jnp.sum(nn.relu(h), axis=(1, 2))
        out = layers.SNDense(1, _XAVIER, name='l6')(h, train)[:, 0]
        if self.num_classes > 0 and y is not None:
            emb = layers.SNEmbed(self.num_classes, nf * 16, _XAVIER, name='l_y')(y, train)
            out = out + jnp.sum(emb * h, axis=1)
        return out


def build(num_classes: int, image_size: int, **kw) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair."""
    if num_classes < 1:
        raise ValueError(f'plgmi needs num_classes >= 1 (the target classes), got {num_classes}.')
    g = ResNetGenerator(
        num_classes,
        num_features=kw['g_dim'],
        image_size=image_size,
        bottom_width=kw['bottom_width'],
        out_act=kw['out_act'],
        channels=kw['channels'],
    )
    d = SNResNetProjectionDiscriminator(num_classes, num_features=kw['d_dim'])
    return g, d


def init(
    g: nn.Module, d: nn.Module, key: jax.Array, *, z_dim: int, image_size: int, num_classes: int
) -> dict:
    """Fresh variables {'generator': ..., 'discriminator': ...}."""
    del num_classes
    kg, kd = jax.random.split(key)
    z = jnp.zeros((2, z_dim), jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    x = jnp.zeros((2, image_size, image_size, g.channels), jnp.float32)
    return {'generator': g.init(kg, z, y, train=False), 'discriminator': d.init(kd, x, y)}


def max_margin_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """PLG-MI's inversion loss: mean(-logit_y) + mean(largest logit of another class).

    Args:
      logits: [B, K] target logits.
      labels: int [B].

    Returns:
      A scalar.
    """
    real = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jnp.mean(-real) + jnp.mean(jnp.max(others, axis=1))


def _warp(image: jax.Array, ys: jax.Array, xs: jax.Array) -> jax.Array:
    """Bilinear sampling of image [H, W, C] at pixel coordinates ys, xs [H', W'] (zeros out)."""

    def channel(c):
        return jax.scipy.ndimage.map_coordinates(c, [ys, xs], order=1, mode='constant')

    return jax.vmap(channel, in_axes=2, out_axes=2)(image)


def _augment_one(u: jax.Array, image: jax.Array) -> jax.Array:
    """Augments image [H, W, C] with the transform drawn from uniforms u [8]."""
    h, w, _ = image.shape
    # RandomResizedCrop(scale=(0.8, 1), ratio=1) + RandomHorizontalFlip, one resample.
    side = jnp.sqrt(0.8 + 0.2 * u[0])
    top, left = u[1] * (1.0 - side) * h, u[2] * (1.0 - side) * w
    ii, jj = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij'
    )
    jj_src = jnp.where(u[3] < 0.5, w - 1.0 - jj, jj)
    ys = top + (ii + 0.5) * side - 0.5
    xs = left + (jj_src + 0.5) * side - 0.5
    out = _warp(image, jnp.clip(ys, 0, h - 1), jnp.clip(xs, 0, w - 1))
    # ColorJitter(brightness=0.2, contrast=0.2, p=0.5), torchvision semantics.
    bright, contrast = 0.8 + 0.4 * u[4], 0.8 + 0.4 * u[5]
    jittered = jnp.clip(out * bright, 0.0, 1.0)
    gray = jnp.mean(jittered @ jnp.asarray([0.299, 0.587, 0.114])[: image.shape[-1]])
    jittered = jnp.clip((jittered - gray) * contrast + gray, 0.0, 1.0)
    out = jnp.where(u[6] < 0.5, jittered, out)
    # RandomRotation(5 degrees) about the centre, zeros outside.
    angle = jnp.deg2rad(10.0 * u[7] - 5.0)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    ys = cy + cos * (ii - cy) - sin * (jj - cx)
    xs = cx + sin * (ii - cy) + cos * (jj - cx)
    return _warp(out, ys, xs)


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """PLG-MI's augmentation of generated images, differentiable in the images.

    RandomResizedCrop(scale 0.8-1, square), ColorJitter(brightness 0.2, contrast 0.2,
    p=0.5), RandomHorizontalFlip and RandomRotation(5 degrees), in that order (Kornia
    applies the two jitters in random order), bilinear.

    Args:
      key: a PRNG key.
      images: [B, H, W, C] in [0, 1].

    Returns:
      [B, H, W, C].
    """
    # One draw for the whole batch: each random op is a costly compile on XLA:CPU.
    u = jax.random.uniform(key, (images.shape[0], 8))
    return jax.vmap(_augment_one)(u, images)
