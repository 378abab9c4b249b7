"""KEDMI prior (Chen et al., ICCV 2021): the GMI generator and a semi-supervised critic.

The generator is GMI's DCGAN (`tldmi_jax.priors.gmi.Generator`, z_dim 100). The
discriminator is `models/discri.py:MinibatchDiscriminator`: four
[Conv + InstanceNorm(affine) + LeakyReLU(0.2)] layers 3 -> dim -> 2*dim -> 4*dim -> 4*dim
(k5 s2 p2 three times, then k3 s2 p1; the first conv is normalised too), flattened in
NCHW order (4096 features at 64 px), minibatch discrimination with
T in R^{4096 x 64 x 50}, and Linear(4096 + 64 -> num_classes). It returns
`(features, logits)`: the 4096 flattened conv features (used for feature matching) and
the class logits (18,888,936 parameters with 1000 classes at dim 64).

The module is re-trained per target: its classes are the target's (soft labels from the
target on public data), see `tldmi_jax.train.gan`.
"""

import flax.linen as nn
import jax

from tldmi_jax.priors import gmi, layers

KIND = 'kedmi'  # Its options: `config_lib.prior_options('kedmi')`.

Generator = gmi.Generator


class MinibatchDiscriminator(nn.Module):
    """images [B, S, S, 3] in [0, 1] -> (features [B, 4*dim*(S/16)^2], logits [B, K]).

    Attributes:
      num_classes: K, the target's classes.
      dim: base width (64 in the original).
      mbd_features: minibatch-discrimination kernels B (64).
      mbd_kernel_dims: dimensions C of each kernel (50).
    """

    num_classes: int
    dim: int = 64
    mbd_features: int = 64
    mbd_kernel_dims: int = 50

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        specs = ((self.dim, 5, 2), (self.dim * 2, 5, 2), (self.dim * 4, 5, 2), (self.dim * 4, 3, 1))
        for i, (width, k, p) in enumerate(specs):
            h = layers.torch_conv(width, k, 2, p, name=f'conv{i + 1}')(h)
            h = nn.leaky_relu(layers.InstanceNorm(name=f'norm{i + 1}')(h), 0.2)
        feat = layers.flatten_nchw(h)
        mb = layers.MinibatchDiscrimination(self.mbd_features, self.mbd_kernel_dims, name='mbd')
        logits = nn.Dense(self.num_classes, name='fc')(mb(feat))
        return feat, logits


def build(num_classes: int, image_size: int, **kw) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair."""
    if num_classes < 1:
        raise ValueError(f'kedmi needs num_classes >= 1 (the target classes), got {num_classes}.')
    gmi.num_doublings(image_size)
    g = Generator(dim=kw['g_dim'], image_size=image_size, channels=kw['channels'])
    d = MinibatchDiscriminator(
        num_classes,
        dim=kw['d_dim'],
        mbd_features=kw['mbd_features'],
        mbd_kernel_dims=kw['mbd_kernel_dims'],
    )
    return g, d


# Same signature and shapes as GMI: an unconditional generator and an image-only D.
init = gmi.init
