"""FaceNet's InceptionResnetV1 (facenet-pytorch), the face embedding behind PPA's delta_face.

Plug & Play Attacks measures how close a reconstruction comes to the private faces of its
target in the feature space of an independent face recogniser: facenet-pytorch's
`InceptionResnetV1(pretrained='vggface2')` (weights `20180402-114759-vggface2.pt`, David
Sandberg's FaceNet trained on VGGFace2). This module is that network, up to its 512-d
L2-normalised embedding; `tldmi_jax.interop.facenet` maps the state dict onto it.

Layout (facenet-pytorch attribute names; every `BasicConv2d` is conv without bias ->
BatchNorm(eps 1e-3) -> ReLU, `inception.BasicConv` here):

| module | what | output at 160 px |
|---|---|---|
| `conv2d_1a` .. `conv2d_4b` | 3x3/2, 3x3, 3x3 pad 1, maxpool 3/2, 1x1, 3x3, 3x3/2 | 17 x 17 x 256 |
| `repeat_1_{0..4}` | 5 x Block35, residual scale 0.17 | 17 x 17 x 256 |
| `mixed_6a` | reduction (3x3/2 conv, 1x1-3x3-3x3/2 convs, max pool 3/2) | 8 x 8 x 896 |
| `repeat_2_{0..9}` | 10 x Block17, scale 0.10 | 8 x 8 x 896 |
| `mixed_7a` | reduction (three conv branches, max pool 3/2) | 3 x 3 x 1792 |
| `repeat_3_{0..4}` | 5 x Block8, scale 0.20 | 3 x 3 x 1792 |
| `block8` | Block8, scale 1.0, no ReLU | 3 x 3 x 1792 |
| `avgpool_1a`, dropout | global mean; dropout 0.6 (training only) | 1792 |
| `last_linear` | Linear 1792 -> 512, no bias | 512 |
| `last_bn` | BatchNorm1d(512, eps 1e-3) | 512 |
| (output) | L2 normalisation (`F.normalize`, eps 1e-12) | 512 |

Each block ends with a 1x1 convolution *with* bias (`conv2d`) whose output is scaled and
added to the block input. Parameter paths are the torch module paths with '.' -> '/' and
`Sequential` indices joined by '_' (`repeat_1.0.branch1.1.conv.weight` ->
`repeat_1_0/branch1_1/conv/kernel`, `torch_path_to_flax`). The `logits` layer of the
checkpoint (the 8631 VGGFace2 training identities) is not part of the embedding model.

Input: [B, 160, 160, 3] float32, standardised as the network was trained (about [-1, 1]:
facenet-pytorch's `fixed_image_standardization` `(255 x - 127.5) / 128`; PPA feeds its
[-1, 1] images `2 x - 1`); `tldmi_jax.evaluation.features.face_fn` resizes and maps [0, 1]
images. Output: the embedding [B, 512], unit L2 norm. Parameters: 23,482,624 (no `logits`;
`count_params()`).
"""

import re
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.inception import BasicConv, Widths, max_pool_reduce, pad
from tldmi_jax.models.layers import BatchNorm, Conv, param_count

IMAGE_SIZE = 160  # Input side of facenet-pytorch's VGGFace2 model.
EMBEDDING_DIM = 512
BN_EPSILON = 1e-3  # facenet-pytorch (TensorFlow's value), BasicConv2d and last_bn alike.
REPEATS = (5, 10, 5)  # Block35, Block17, Block8 in repeat_1, repeat_2, repeat_3.
SCALES = (0.17, 0.10, 0.20)  # Their residual scales; `block8` uses 1.0.
DROPOUT = 0.6  # facenet-pytorch's default dropout_prob (training only).
NORM_EPS = 1e-12  # torch.nn.functional.normalize.


def _residual(x: jax.Array, branches: jax.Array, scale: float, relu: bool) -> jax.Array:
    """`conv2d` (1x1 with bias, back to the input width), scaled, added to the input."""
    up = Conv(x.shape[-1], (1, 1), name='conv2d')(branches)
    out = up * scale + x
    return nn.relu(out) if relu else out


class Block35(nn.Module):
    """facenet-pytorch `Block35` (35x35 grid in the TF original; 17x17 at 160 px)."""

    scale: float = 1.0
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        b0 = BasicConv(c(32), name='branch0')(x, train)
        b1 = BasicConv(c(32), name='branch1_0')(x, train)
        b1 = BasicConv(c(32), (3, 3), padding=pad(1, 1), name='branch1_1')(b1, train)
        b2 = BasicConv(c(32), name='branch2_0')(x, train)
        b2 = BasicConv(c(32), (3, 3), padding=pad(1, 1), name='branch2_1')(b2, train)
        b2 = BasicConv(c(32), (3, 3), padding=pad(1, 1), name='branch2_2')(b2, train)
        return _residual(x, jnp.concatenate([b0, b1, b2], axis=-1), self.scale, True)


class Block17(nn.Module):
    """facenet-pytorch `Block17`: a 1x1 branch and a 1x1 -> 1x7 -> 7x1 branch."""

    scale: float = 1.0
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        b0 = BasicConv(c(128), name='branch0')(x, train)
        b1 = BasicConv(c(128), name='branch1_0')(x, train)
        b1 = BasicConv(c(128), (1, 7), padding=pad(0, 3), name='branch1_1')(b1, train)
        b1 = BasicConv(c(128), (7, 1), padding=pad(3, 0), name='branch1_2')(b1, train)
        return _residual(x, jnp.concatenate([b0, b1], axis=-1), self.scale, True)


class Block8(nn.Module):
    """facenet-pytorch `Block8`: a 1x1 branch and a 1x1 -> 1x3 -> 3x1 branch.

    Attributes:
      scale: residual scale.
      no_relu: skip the final ReLU (the last block, `block8`).
      width_mult: channel multiplier.
    """

    scale: float = 1.0
    no_relu: bool = False
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        b0 = BasicConv(c(192), name='branch0')(x, train)
        b1 = BasicConv(c(192), name='branch1_0')(x, train)
        b1 = BasicConv(c(192), (1, 3), padding=pad(0, 1), name='branch1_1')(b1, train)
        b1 = BasicConv(c(192), (3, 1), padding=pad(1, 0), name='branch1_2')(b1, train)
        branches = jnp.concatenate([b0, b1], axis=-1)
        return _residual(x, branches, self.scale, not self.no_relu)


class Mixed6a(nn.Module):
    """facenet-pytorch `Mixed_6a`: grid reduction 17 -> 8 at 160 px (256 -> 896 channels)."""

    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        b0 = BasicConv(c(384), (3, 3), strides=(2, 2), name='branch0')(x, train)
        b1 = BasicConv(c(192), name='branch1_0')(x, train)
        b1 = BasicConv(c(192), (3, 3), padding=pad(1, 1), name='branch1_1')(b1, train)
        b1 = BasicConv(c(256), (3, 3), strides=(2, 2), name='branch1_2')(b1, train)
        return jnp.concatenate([b0, b1, max_pool_reduce(x)], axis=-1)


class Mixed7a(nn.Module):
    """facenet-pytorch `Mixed_7a`: grid reduction 8 -> 3 at 160 px (896 -> 1792 channels)."""

    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        b0 = BasicConv(c(256), name='branch0_0')(x, train)
        b0 = BasicConv(c(384), (3, 3), strides=(2, 2), name='branch0_1')(b0, train)
        b1 = BasicConv(c(256), name='branch1_0')(x, train)
        b1 = BasicConv(c(256), (3, 3), strides=(2, 2), name='branch1_1')(b1, train)
        b2 = BasicConv(c(256), name='branch2_0')(x, train)
        b2 = BasicConv(c(256), (3, 3), padding=pad(1, 1), name='branch2_1')(b2, train)
        b2 = BasicConv(c(256), (3, 3), strides=(2, 2), name='branch2_2')(b2, train)
        return jnp.concatenate([b0, b1, b2, max_pool_reduce(x)], axis=-1)


# The stem convs in order: (name, output channels, kernel, stride, padding); `maxpool_3a`
# (3/2) follows conv2d_2b.
STEM = (
    ('conv2d_1a', 32, 3, 2, 0),
    ('conv2d_2a', 32, 3, 1, 0),
    ('conv2d_2b', 64, 3, 1, 1),
    ('conv2d_3b', 80, 1, 1, 0),
    ('conv2d_4a', 192, 3, 1, 0),
    ('conv2d_4b', 256, 3, 2, 0),
)
_BLOCKS = (Block35, Block17, Block8)


class InceptionResnetV1(nn.Module):
    """facenet-pytorch `InceptionResnetV1(classify=False)`: images -> unit-norm embeddings.

    Attributes:
      embedding_dim: outputs of `last_linear` (512 in the released models).
      repeats: blocks in repeat_1/2/3 (5, 10, 5); fewer give the tiny test variant.
      width_mult: channel multiplier; smaller values give the tiny test variant.
      dropout_rate: dropout before `last_linear` in training mode.
    """

    embedding_dim: int = EMBEDDING_DIM
    repeats: tuple[int, int, int] = REPEATS
    width_mult: float = 1.0
    dropout_rate: float = DROPOUT

    # Input side the network is used at.
    IMAGE_SIZE: ClassVar[int] = IMAGE_SIZE

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Embeds faces.

        Args:
          x: [B, H, W, 3] float32, standardised (about [-1, 1]); H = W = 160 for the real
            network (>= 75).
          train: use batch statistics in BatchNorm and apply dropout (needs a 'dropout' rng);
            never needed for evaluation.

        Returns:
          [B, embedding_dim] float32 embeddings of unit L2 norm.
        """
        c = Widths(self.width_mult)
        w = self.width_mult
        for name, channels, k, s, p in STEM:
            x = BasicConv(c(channels), (k, k), strides=(s, s), padding=pad(p, p), name=name)(
                x, train
            )
            if name == 'conv2d_2b':
                x = max_pool_reduce(x)  # maxpool_3a
        for stage, (block, n, scale) in enumerate(zip(_BLOCKS, self.repeats, SCALES, strict=True)):
            for i in range(n):
                x = block(scale=scale, width_mult=w, name=f'repeat_{stage + 1}_{i}')(x, train)
            if stage == 0:
                x = Mixed6a(w, name='mixed_6a')(x, train)
            elif stage == 1:
                x = Mixed7a(w, name='mixed_7a')(x, train)
        x = Block8(scale=1.0, no_relu=True, width_mult=w, name='block8')(x, train)
        x = jnp.mean(x, axis=(1, 2))  # avgpool_1a
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.embedding_dim, use_bias=False, name='last_linear')(x)
        x = BatchNorm(epsilon=BN_EPSILON, name='last_bn')(x, train)
        norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
        return x / jnp.maximum(norm, NORM_EPS)


class _TinyInceptionResnetV1(InceptionResnetV1):
    """Same graph and names with one block per repeat at 1/16 width (32-d), 75 px; tests."""

    embedding_dim: int = 32
    repeats: tuple[int, int, int] = (1, 1, 1)
    width_mult: float = 1.0 / 16.0
    IMAGE_SIZE: ClassVar[int] = 75


# name -> module class; `config.face_model.arch` and `--arch` of the converter pick one.
FACE_MODELS: dict[str, type[InceptionResnetV1]] = {
    'inception_resnet_v1': InceptionResnetV1,
    'inception_resnet_v1_tiny': _TinyInceptionResnetV1,
}


def get_face_model(name: str) -> InceptionResnetV1:
    """Builds a face embedding model by `FACE_MODELS` name.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in FACE_MODELS:
        raise ValueError(f'Unknown face model {name!r}; known: {", ".join(sorted(FACE_MODELS))}')
    return FACE_MODELS[name]()


def torch_path_to_flax(path: str) -> str:
    """A facenet-pytorch module path -> this module's '/'-joined path.

    `Sequential` indices join their parent with '_': 'repeat_2.3.branch1.0' ->
    'repeat_2_3/branch1_0'.
    """
    return re.sub(r'\.(\d+)', r'_\1', path).replace('.', '/')


def count_params(model: InceptionResnetV1 | None = None, image_size: int | None = None) -> int:
    """Number of parameters (not batch statistics), from shapes only (`jax.eval_shape`)."""
    model = model or InceptionResnetV1()
    return param_count(model, image_size or model.IMAGE_SIZE)
