"""GMI prior (Zhang et al., CVPR 2020): a DCGAN generator and a WGAN-GP critic.

`Generator` is `models/generator.py:Generator` of GMI/KEDMI/TL-DMI:
Linear(z -> 8*dim*4*4, no bias) -> BN1d -> ReLU -> view NCHW [B, 8*dim, 4, 4] ->
3 x [ConvTranspose(k5, s2, p2, op1, no bias) + BN + ReLU] (8*dim -> 4*dim -> 2*dim -> dim)
-> ConvTranspose(dim -> 3, k5, s2, p2, op1) -> sigmoid, a 64x64 image in [0, 1]
(5,142,083 parameters at dim 64). At other sizes the 4x4 base has `dim * size / 8`
channels and there is one upsampling block fewer per halving (32 px is the original
`GeneratorMNIST` layout with 3 channels).

`DGWGAN` is the critic: Conv(3 -> dim, k5 s2 p2) + LeakyReLU(0.2), then
[Conv k5 s2 p2 + InstanceNorm(affine) + LeakyReLU(0.2)] doubling the width down to 4x4
(dim -> 8*dim at 64 px), then Conv(k4, valid) -> one score per image (4,316,545 parameters
at dim 64). At 32 px it is the original `DGWGAN32`.

PyTorch weights convert as: Linear `weight.T`; ConvTranspose2d `(in, out, kh, kw)
.transpose(2, 3, 1, 0)`; Conv2d `(out, in, kh, kw).transpose(2, 3, 1, 0)`; BatchNorm
`weight, bias -> scale, bias` and `running_mean, running_var -> batch_stats mean, var`.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.layers import BatchNorm
from tldmi_jax.priors import layers

KIND = 'gmi'  # Its options: `config_lib.prior_options('gmi')`.


def num_doublings(image_size: int) -> int:
    """How many stride-2 stages separate a 4x4 map from `image_size` (a power of two)."""
    n = int(round(math.log2(image_size / 4)))
    if n < 1 or 4 * 2**n != image_size:
        raise ValueError(f'image_size must be 4 * 2**n with n >= 1, got {image_size}.')
    return n


class Generator(nn.Module):
    """DCGAN generator: z [B, z_dim] -> images [B, S, S, 3] in [0, 1].

    Attributes:
      dim: base width (64 in the original).
      image_size: output side, 4 * 2**n (64 in the original).
      channels: output channels.
    """

    dim: int = 64
    image_size: int = 64
    channels: int = 3

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        n = num_doublings(self.image_size)
        width = self.dim * 2 ** (n - 1)
        h = nn.Dense(width * 16, use_bias=False, name='l1')(z)
        h = nn.relu(BatchNorm(name='l1_bn')(h, train))
        # torch views [B, C, 4, 4]; NHWC needs the transpose so that Linear weights convert.
        h = h.reshape(z.shape[0], width, 4, 4).transpose(0, 2, 3, 1)
        for i in range(n - 1):
            width //= 2
            h = layers.ConvTranspose(width, use_bias=False, name=f'deconv{i + 1}')(h)
            h = nn.relu(BatchNorm(name=f'bn{i + 1}')(h, train))
        h = layers.ConvTranspose(self.channels, name=f'deconv{n}')(h)
        return nn.sigmoid(h)


class DGWGAN(nn.Module):
    """WGAN-GP critic: images [B, S, S, 3] in [0, 1] -> scores [B].

    Attributes:
      dim: base width (64 in the original).
      image_size: input side, 4 * 2**n (64 in the original).
    """

    dim: int = 64
    image_size: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = num_doublings(self.image_size)
        h = nn.leaky_relu(layers.torch_conv(self.dim, 5, 2, 2, name='conv1')(x), 0.2)
        for i in range(1, n):
            h = layers.torch_conv(self.dim * 2**i, 5, 2, 2, name=f'conv{i + 1}')(h)
            h = nn.leaky_relu(layers.InstanceNorm(name=f'norm{i + 1}')(h), 0.2)
        h = nn.Conv(1, (4, 4), padding='VALID', name='out')(h)
        return h.reshape(x.shape[0])


def build(num_classes: int, image_size: int, **kw) -> tuple[nn.Module, nn.Module]:
    """The (generator, critic) pair; `num_classes` is unused (GMI is unconditional)."""
    del num_classes
    num_doublings(image_size)
    g = Generator(dim=kw['g_dim'], image_size=image_size, channels=kw['channels'])
    d = DGWGAN(dim=kw['d_dim'], image_size=image_size)
    return g, d


def init(
    g: nn.Module, d: nn.Module, key: jax.Array, *, z_dim: int, image_size: int, num_classes: int
) -> dict:
    """Fresh variables {'generator': ..., 'discriminator': ...}."""
    del num_classes
    kg, kd = jax.random.split(key)
    z = jnp.zeros((2, z_dim), jnp.float32)
    x = jnp.zeros((2, image_size, image_size, g.channels), jnp.float32)
    return {'generator': g.init(kg, z, train=False), 'discriminator': d.init(kd, x)}
