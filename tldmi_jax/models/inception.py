"""Inception-v3: the FID network (`FIDInceptionV3`) and the trunk torchvision's shares.

The two share their trunk (`BasicConv`, the A-E blocks and the module names) and differ in
the pool branches, which each block takes as `pool` ('avg', 'avg_pad' or 'max', `POOLS`).

**`InceptionV3`**, torchvision's classifier on this trunk, is in `inception_v3.py`.

**`FIDInceptionV3`**: the FID Inception-v3 (TF graph `inception-2015-12-05`), up to its
2048-d pool3 features.

This is the network behind every standard FID number: the 2015 TensorFlow Inception graph,
as ported to PyTorch by pytorch-fid (`fid_inception_v3()`: torchvision's `Inception3` with
`FIDInceptionA`/`C`/`E_1`/`E_2` blocks, weights `pt_inception-2015-12-05-6726825d.pth`).
StyleGAN2-ADA's `inception-2015-12-05.pt` detector is the same network and weights. It
differs from torchvision's ImageNet Inception-v3 in three places, all reproduced here:

* the average-pool branches of the A, C and first E blocks exclude the zero padding from
  the mean (TensorFlow's `avg_pool`; torch's `count_include_pad=False`);
* the second E block (`Mixed_7c`) max-pools in its pool branch;
* the classifier has 1008 outputs (kept so that the checkpoint converts 1:1; FID only uses
  the pool3 features).

Input: [B, 299, 299, 3] float32 scaled to [-1, 1] (pytorch-fid maps [0, 1] images with
`2 * x - 1` after a bilinear resize to 299; `tldmi_jax.evaluation.features` does both).
Output: `(pool3 [B, 2048], logits [B, 1008])`, the repo's `(features, logits)` convention.

Parameter names map one-to-one onto pytorch-fid's state dict (see `torch_name_to_flax`):

| pytorch-fid key                     | here                                   |
|-------------------------------------|----------------------------------------|
| `{block}.conv.weight` [O, I, kh, kw]  | `params/{block}/conv/kernel` [kh, kw, I, O] |
| `{block}.bn.weight`                 | `params/{block}/bn/scale`              |
| `{block}.bn.bias`                   | `params/{block}/bn/bias`               |
| `{block}.bn.running_mean`           | `batch_stats/{block}/bn/mean`          |
| `{block}.bn.running_var`            | `batch_stats/{block}/bn/var`           |
| `{block}.bn.num_batches_tracked`    | (dropped)                              |
| `fc.weight` [1008, 2048]            | `params/fc/kernel` [2048, 1008]        |
| `fc.bias`                           | `params/fc/bias`                       |

where `{block}` is a torch module path with '.' replaced by '/', e.g. `Conv2d_1a_3x3` or
`Mixed_6b/branch7x7dbl_3`. Convolutions have no bias; BatchNorm epsilon is 1e-3 as in
torchvision's `BasicConv2d`. Parameters: 23,850,960 (torchvision `inception_v3` without
the auxiliary head, 1008 classes; `count_params()`), of which 21,785,568 before `fc`.
"""

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tldmi_jax.models.layers import BatchNorm, Conv, param_count

IMAGE_SIZE = 299  # Input side of the FID Inception.
FEATURE_DIM = 2048  # pool3 features.
NUM_CLASSES = 1008  # Outputs of the 2015 graph's classifier.
BN_EPSILON = 1e-3  # torchvision BasicConv2d.

Padding = tuple[tuple[int, int], tuple[int, int]]


def pad(ph: int, pw: int) -> Padding:
    """Symmetric padding of ph rows and pw columns."""
    return ((ph, ph), (pw, pw))


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU: torchvision `BasicConv2d`.

    Attributes:
      features: output channels.
      kernel: (kh, kw).
      strides: (sh, sw).
      padding: ((top, bottom), (left, right)).
    """

    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: Padding = ((0, 0), (0, 0))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv(
            self.features,
            self.kernel,
            strides=self.strides,
            padding=self.padding,
            use_bias=False,
            name='conv',
        )(x)
        x = BatchNorm(epsilon=BN_EPSILON, name='bn')(x, train)
        return nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool, padding 1, padded zeros excluded from the mean (TF)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=pad(1, 1), count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 max pool with padding 1 (the FID graph's Mixed_7c pool branch)."""
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=pad(1, 1))


def _pool_same(x: jax.Array, pool: str) -> jax.Array:
    """The 3x3 stride-1 pool of a pool branch, by `POOLS` name."""
    if pool == 'avg':
        return _avg_pool_same(x)
    if pool == 'avg_pad':  # torch's default count_include_pad=True (torchvision Inception3).
        return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=pad(1, 1))
    if pool == 'max':
        return _max_pool_same(x)
    raise ValueError(f'pool must be one of {POOLS}, got {pool!r}.')


def max_pool_reduce(x: jax.Array) -> jax.Array:
    """3x3 stride-2 max pool without padding."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
    """`FIDInceptionA` (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and avg-pool branches.

    `pool='avg_pad'` is torchvision's `InceptionA`.
    """

    pool_features: int
    width_mult: float = 1.0
    pool: str = 'avg'

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        b1 = BasicConv(c(64), name='branch1x1')(x, train)
        b5 = BasicConv(c(48), name='branch5x5_1')(x, train)
        b5 = BasicConv(c(64), (5, 5), padding=pad(2, 2), name='branch5x5_2')(b5, train)
        b3 = BasicConv(c(64), name='branch3x3dbl_1')(x, train)
        b3 = BasicConv(c(96), (3, 3), padding=pad(1, 1), name='branch3x3dbl_2')(b3, train)
        b3 = BasicConv(c(96), (3, 3), padding=pad(1, 1), name='branch3x3dbl_3')(b3, train)
        pooled = _pool_same(x, self.pool)
        bp = BasicConv(c(self.pool_features), name='branch_pool')(pooled, train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision `InceptionB` (Mixed_6a): grid reduction 35 -> 17."""

    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        b3 = BasicConv(c(384), (3, 3), strides=(2, 2), name='branch3x3')(x, train)
        bd = BasicConv(c(64), name='branch3x3dbl_1')(x, train)
        bd = BasicConv(c(96), (3, 3), padding=pad(1, 1), name='branch3x3dbl_2')(bd, train)
        bd = BasicConv(c(96), (3, 3), strides=(2, 2), name='branch3x3dbl_3')(bd, train)
        return jnp.concatenate([b3, bd, max_pool_reduce(x)], axis=-1)


class InceptionC(nn.Module):
    """`FIDInceptionC` (Mixed_6b..e): factorised 7x7 branches and an avg-pool branch.

    `pool='avg_pad'` is torchvision's `InceptionC`.
    """

    channels_7x7: int
    width_mult: float = 1.0
    pool: str = 'avg'

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        c7 = c(self.channels_7x7)
        row, col = dict(kernel=(1, 7), padding=pad(0, 3)), dict(kernel=(7, 1), padding=pad(3, 0))
        b1 = BasicConv(c(192), name='branch1x1')(x, train)
        b7 = BasicConv(c7, name='branch7x7_1')(x, train)
        b7 = BasicConv(c7, **row, name='branch7x7_2')(b7, train)
        b7 = BasicConv(c(192), **col, name='branch7x7_3')(b7, train)
        bd = BasicConv(c7, name='branch7x7dbl_1')(x, train)
        bd = BasicConv(c7, **col, name='branch7x7dbl_2')(bd, train)
        bd = BasicConv(c7, **row, name='branch7x7dbl_3')(bd, train)
        bd = BasicConv(c7, **col, name='branch7x7dbl_4')(bd, train)
        bd = BasicConv(c(192), **row, name='branch7x7dbl_5')(bd, train)
        bp = BasicConv(c(192), name='branch_pool')(_pool_same(x, self.pool), train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision `InceptionD` (Mixed_7a): grid reduction 17 -> 8."""

    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        b3 = BasicConv(c(192), name='branch3x3_1')(x, train)
        b3 = BasicConv(c(320), (3, 3), strides=(2, 2), name='branch3x3_2')(b3, train)
        b7 = BasicConv(c(192), name='branch7x7x3_1')(x, train)
        b7 = BasicConv(c(192), (1, 7), padding=pad(0, 3), name='branch7x7x3_2')(b7, train)
        b7 = BasicConv(c(192), (7, 1), padding=pad(3, 0), name='branch7x7x3_3')(b7, train)
        b7 = BasicConv(c(192), (3, 3), strides=(2, 2), name='branch7x7x3_4')(b7, train)
        return jnp.concatenate([b3, b7, max_pool_reduce(x)], axis=-1)


class InceptionE(nn.Module):
    """`FIDInceptionE_1` (pool='avg', Mixed_7b) or `FIDInceptionE_2` (pool='max', Mixed_7c).

    `pool='avg_pad'` is torchvision's `InceptionE` (Mixed_7b and Mixed_7c).
    """

    pool: str = 'avg'
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        row, col = dict(kernel=(1, 3), padding=pad(0, 1)), dict(kernel=(3, 1), padding=pad(1, 0))
        b1 = BasicConv(c(320), name='branch1x1')(x, train)
        b3 = BasicConv(c(384), name='branch3x3_1')(x, train)
        b3 = jnp.concatenate(
            [
                BasicConv(c(384), **row, name='branch3x3_2a')(b3, train),
                BasicConv(c(384), **col, name='branch3x3_2b')(b3, train),
            ],
            axis=-1,
        )
        bd = BasicConv(c(448), name='branch3x3dbl_1')(x, train)
        bd = BasicConv(c(384), (3, 3), padding=pad(1, 1), name='branch3x3dbl_2')(bd, train)
        bd = jnp.concatenate(
            [
                BasicConv(c(384), **row, name='branch3x3dbl_3a')(bd, train),
                BasicConv(c(384), **col, name='branch3x3dbl_3b')(bd, train),
            ],
            axis=-1,
        )
        bp = BasicConv(c(192), name='branch_pool')(_pool_same(x, self.pool), train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Widths:
    """Scales channel counts for the tiny variant (identity at width_mult=1)."""

    def __init__(self, width_mult: float):
        self.width_mult = width_mult

    def __call__(self, channels: int) -> int:
        if self.width_mult == 1.0:
            return channels
        return max(1, int(round(channels * self.width_mult)))


STEM = ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1', 'Conv2d_4a_3x3')
MIXED = (
    'Mixed_5b',
    'Mixed_5c',
    'Mixed_5d',
    'Mixed_6a',
    'Mixed_6b',
    'Mixed_6c',
    'Mixed_6d',
    'Mixed_6e',
    'Mixed_7a',
    'Mixed_7b',
    'Mixed_7c',
)
# Pool branches: 'avg' excludes the padding (TF, FID), 'avg_pad' includes it (torchvision),
# 'max' is the FID graph's Mixed_7c.
POOLS = ('avg', 'avg_pad', 'max')


# The trunk in three pieces, shared by both networks. Called inside a compact `__call__`,
# so the blocks are submodules of that network, named after torchvision's attributes.
def stem(x: jax.Array, train: bool, width_mult: float) -> jax.Array:
    """Conv2d_1a_3x3 .. Conv2d_4a_3x3 with the two max pools: 299 -> 35 px, 192 channels."""
    c = Widths(width_mult)
    x = BasicConv(c(32), (3, 3), strides=(2, 2), name='Conv2d_1a_3x3')(x, train)
    x = BasicConv(c(32), (3, 3), name='Conv2d_2a_3x3')(x, train)
    x = BasicConv(c(64), (3, 3), padding=pad(1, 1), name='Conv2d_2b_3x3')(x, train)
    x = max_pool_reduce(x)
    x = BasicConv(c(80), name='Conv2d_3b_1x1')(x, train)
    x = BasicConv(c(192), (3, 3), name='Conv2d_4a_3x3')(x, train)
    return max_pool_reduce(x)


def mixed_5_6(x: jax.Array, train: bool, width_mult: float, pool: str) -> jax.Array:
    """Mixed_5b .. Mixed_6e (A blocks at 35 px, reduction, C blocks at 17 px)."""
    for name, pool_features in zip(MIXED[:3], (32, 64, 64), strict=True):
        x = InceptionA(pool_features, width_mult, pool, name=name)(x, train)
    x = InceptionB(width_mult, name='Mixed_6a')(x, train)
    for name, c7 in zip(MIXED[4:8], (128, 160, 160, 192), strict=True):
        x = InceptionC(c7, width_mult, pool, name=name)(x, train)
    return x


def mixed_7(x: jax.Array, train: bool, width_mult: float, pools: tuple[str, str]) -> jax.Array:
    """Mixed_7a .. Mixed_7c (reduction, E blocks at 8 px with pool branches `pools`)."""
    x = InceptionD(width_mult, name='Mixed_7a')(x, train)
    x = InceptionE(pools[0], width_mult, name='Mixed_7b')(x, train)
    return InceptionE(pools[1], width_mult, name='Mixed_7c')(x, train)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 returning `(pool3 features, logits)`.

    Attributes:
      num_classes: classifier outputs (1008 in the 2015 graph).
      width_mult: channel multiplier; 1.0 is the real network, smaller values give the
        tiny random-weight stand-in used by `runlocal` and tests.
    """

    num_classes: int = NUM_CLASSES
    width_mult: float = 1.0

    # Input side the network is used at.
    IMAGE_SIZE: ClassVar[int] = IMAGE_SIZE

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """Ordered `(group_name, regex over the '/'-joined parameter path)`; last is `fc`."""
        stem = tuple((name, f'{name}/.*') for name in STEM)
        mixed = tuple((name, f'{name}/.*') for name in MIXED)
        return (*stem, *mixed, ('head', 'fc/.*'))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Computes pool3 features and logits.

        Args:
          x: [B, H, W, 3] float32 in [-1, 1]; H = W = 299 for the real network (>= 75).
          train: use batch statistics in BatchNorm (never needed for FID).

        Returns:
          `(features, logits)`: [B, 2048 * width_mult] pool3 and [B, num_classes].
        """
        w = self.width_mult
        x = stem(x, train, w)
        x = mixed_5_6(x, train, w, 'avg')
        x = mixed_7(x, train, w, ('avg', 'max'))
        features = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name='fc')(features)
        return features, logits


class _TinyFIDInceptionV3(FIDInceptionV3):
    """Same graph and names at 1/16 width (128-d features), 75 px input; random weights."""

    num_classes: int = 16
    width_mult: float = 1.0 / 16.0
    IMAGE_SIZE: ClassVar[int] = 75


# name -> module class; `config.fid.arch` picks one.
INCEPTIONS: dict[str, type[FIDInceptionV3]] = {
    'fid_inception': FIDInceptionV3,
    'fid_inception_tiny': _TinyFIDInceptionV3,
}


def get_inception(name: str) -> FIDInceptionV3:
    """Builds an Inception by `INCEPTIONS` name.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in INCEPTIONS:
        raise ValueError(f'Unknown Inception {name!r}; known: {", ".join(sorted(INCEPTIONS))}')
    return INCEPTIONS[name]()


def torch_name_to_flax(name: str) -> tuple[str, tuple[str, ...]] | None:
    """Maps a pytorch-fid state-dict key to `(collection, path)`; None for dropped keys.

    Kernels also need a transpose: conv OIHW -> HWIO, `fc.weight` [out, in] -> [in, out].

    Args:
      name: e.g. 'Mixed_6b.branch7x7dbl_3.conv.weight'.

    Returns:
      e.g. ('params', ('Mixed_6b', 'branch7x7dbl_3', 'conv', 'kernel')), or None for
      `num_batches_tracked`.

    Raises:
      ValueError: for a key that has no counterpart here.
    """
    *modules, leaf = name.split('.')
    if leaf == 'num_batches_tracked':
        return None
    kind = modules[-1] if modules else ''
    top = modules[0] if modules else ''
    if top not in (*STEM, *MIXED, 'fc') or (top == 'fc') != (modules == ['fc']):
        raise ValueError(f'No FIDInceptionV3 counterpart for pytorch-fid key {name!r}.')
    table = {
        ('conv', 'weight'): ('params', 'kernel'),
        ('bn', 'weight'): ('params', 'scale'),
        ('bn', 'bias'): ('params', 'bias'),
        ('bn', 'running_mean'): ('batch_stats', 'mean'),
        ('bn', 'running_var'): ('batch_stats', 'var'),
        ('fc', 'weight'): ('params', 'kernel'),
        ('fc', 'bias'): ('params', 'bias'),
    }
    if (kind, leaf) not in table:
        raise ValueError(f'No FIDInceptionV3 counterpart for pytorch-fid key {name!r}.')
    collection, new_leaf = table[(kind, leaf)]
    return collection, (*modules, new_leaf)


def random_variables(model: FIDInceptionV3, seed: int = 0) -> dict:
    """Random weights for the stand-in (runlocal/tests), without compiling `model.init`.

    Shapes come from `jax.eval_shape`; kernels are He-normal (std sqrt(2 / fan_in)), so the
    ReLU network keeps informative activations; BatchNorm is the identity (scale 1, bias 0,
    mean 0, var 1). Tracing `init` of the 94-conv graph takes 10-20 s on a CPU; this ~1 s.

    Returns:
      `{'params': ..., 'batch_stats': ...}` of numpy arrays.
    """
    size = model.IMAGE_SIZE
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        name = path[-1].key
        if name == 'kernel':
            fan_in = math.prod(leaf.shape[:-1])
            return rng.normal(0.0, math.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        fill = 1.0 if name in ('scale', 'var') else 0.0
        return np.full(leaf.shape, fill, np.float32)

    return {
        'params': jax.tree_util.tree_map_with_path(make, shapes['params']),
        'batch_stats': jax.tree_util.tree_map_with_path(make, shapes['batch_stats']),
    }


def count_params(model: FIDInceptionV3 | None = None, image_size: int | None = None) -> int:
    """Number of parameters (not batch statistics), from shapes only."""
    model = model or FIDInceptionV3()
    return param_count(model, image_size or model.IMAGE_SIZE)
