"""torchvision EfficientNet-B0/B1/B2: LOMMA's augmented (student) models.

LOMMA's `models/classify.py:EfficientNet_b{0,1,2}` keep torchvision's `features` and
`avgpool` (`Sequential(*children[:-1])`, dropping torchvision's Dropout + Linear
classifier), flatten the pooled map into the feature vector (1280-d for B0/B1, 1408-d for
B2) and classify it with a fresh `Linear(feat_dim, num_classes)`; `forward` returns
`(feature, logits)`. There is no dropout before that classifier.

torchvision layout, reproduced here:

- `features_0`: stem Conv3x3/2 (no bias) -> BN -> SiLU.
- `features_{s}_{j}` (stage s = 1..7, block j from 0): MBConv. Optional 1x1 expansion
  (conv-BN-SiLU), depthwise kxk (stride on the first block of a stage) conv-BN-SiLU,
  squeeze-excitation (avg-pool -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid, squeeze width
  `max(1, in // 4)`), 1x1 projection conv-BN; a residual (with stochastic depth, "row"
  mode, probability `0.2 * block_index / num_blocks`) when stride 1 and in == out.
- `features_8`: head Conv1x1 to `4 * last_width` -> BN -> SiLU; global average pool.
- `fc`: the classifier.

Widths scale by `width_mult` with torchvision's `_make_divisible(c * w, 8)`, stage depths by
`ceil(depth * depth_mult)`. BatchNorm is torch's default (eps 1e-5, momentum 0.1), which
torchvision uses for B0-B4.

Parameter paths map one-to-one onto torchvision keys: `features_{s}_{j}/block_{b}/conv` is
`features.{s}.{j}.block.{b}.0`, `.../block_{b}/bn` is `...block.{b}.1`, the SE convs are
`.../block_{b}/fc1` and `fc2`; `features_0/{conv,bn}` and `features_8/{conv,bn}` are
`features.0.{0,1}` and `features.8.{0,1}`; `fc` is LOMMA's `fc_layer`.
Layer groups: `stem`, `stage1`..`stage7`, `head_conv`, `head`. Cut points: `stage1`..`stage7`
(the groups of the same name) and `head`; the old names `features_{i}` (torchvision's child
index: 0 the stem, 1-7 the stages, 8 the head conv) are aliases.
"""

import math
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.layers import BatchNorm, Conv, DepthwiseConv

# torchvision's B0 table: (expand_ratio, kernel, stride, in, out, num_layers) per stage.
_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

# torchvision initialises every conv with kaiming_normal_(mode='fan_out').
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: nearest multiple of `divisor`, never below 90%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _torch_linear_bias(fan_in: int):
    """Bias init of a fresh torch `nn.Linear`: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class ConvBNAct(nn.Module):
    """torchvision `Conv2dNormActivation`: conv (no bias, pad (k-1)//2) -> BN -> SiLU?"""

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pad = (self.kernel - 1) // 2
        if self.groups > 1 and self.groups == self.features == x.shape[-1]:
            # Depthwise: shifted slices instead of XLA:CPU's slow grouped convolution.
            conv = DepthwiseConv(self.kernel, self.stride, pad, kernel_init=_conv_init, name='conv')
        else:
            conv = Conv(
                self.features,
                (self.kernel, self.kernel),
                strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                feature_group_count=self.groups,
                use_bias=False,
                kernel_init=_conv_init,
                name='conv',
            )
        x = BatchNorm(name='bn')(conv(x), train)
        return nn.silu(x) if self.act else x


class SqueezeExcitation(nn.Module):
    """torchvision `SqueezeExcitation` with SiLU: x * sigmoid(fc2(silu(fc1(avgpool(x)))))."""

    squeeze: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.silu(Conv(self.squeeze, (1, 1), kernel_init=_conv_init, name='fc1')(s))
        s = Conv(width, (1, 1), kernel_init=_conv_init, name='fc2')(s)
        return x * nn.sigmoid(s)


class MBConv(nn.Module):
    """torchvision `MBConv` block (children named `block_{b}` as in `block.{b}`).

    Attributes:
      out_width: output channels.
      expand_ratio: expansion of the input width (1: no expansion conv).
      kernel: depthwise kernel size.
      stride: depthwise stride.
      drop_prob: stochastic-depth probability of the residual branch (training only).
    """

    out_width: int
    expand_ratio: int
    kernel: int
    stride: int
    drop_prob: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        in_width = x.shape[-1]
        expanded = make_divisible(in_width * self.expand_ratio)
        b = 0
        y = x
        if expanded != in_width:
            y = ConvBNAct(expanded, name=f'block_{b}')(y, train)
            b += 1
        depthwise = ConvBNAct(expanded, self.kernel, self.stride, expanded, name=f'block_{b}')
        y = depthwise(y, train)
        y = SqueezeExcitation(max(1, in_width // 4), name=f'block_{b + 1}')(y)
        y = ConvBNAct(self.out_width, act=False, name=f'block_{b + 2}')(y, train)
        if self.stride != 1 or in_width != self.out_width:
            return y
        if train and self.drop_prob > 0.0:
            # torchvision's stochastic_depth(mode='row'): drop the branch per example.
            keep = 1.0 - self.drop_prob
            mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (y.shape[0], 1, 1, 1))
            y = y * mask.astype(y.dtype) / keep
        return y + x


class EfficientNet(nn.Module):
    """torchvision-layout EfficientNet with LOMMA's head, returning `(features, logits)`.

    Attributes:
      num_classes: number of output logits.
      width_mult: channel multiplier (B0 1.0, B1 1.0, B2 1.1).
      depth_mult: stage depth multiplier (B0 1.0, B1 1.1, B2 1.2).
      stage_depths: blocks per stage before `depth_mult` (torchvision's B0 table).
      stochastic_depth_prob: drop probability of the last block (linear in block index).
    """

    num_classes: int
    width_mult: float = 1.0
    depth_mult: float = 1.0
    stage_depths: Sequence[int] = tuple(s[5] for s in _STAGES)
    stochastic_depth_prob: float = 0.2

    # No released TL-DMI freeze point for the LOMMA students.
    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = None

    def _width(self, channels: int) -> int:
        return make_divisible(channels * self.width_mult)

    @property
    def depths(self) -> tuple[int, ...]:
        """Blocks per stage after `depth_mult` (torchvision: `ceil(n * depth_mult)`)."""
        return tuple(int(math.ceil(n * self.depth_mult)) for n in self.stage_depths)

    @property
    def feat_dim(self) -> int:
        """Width of the feature vector: `4 * ` the last stage's width."""
        return 4 * self._width(_STAGES[-1][4])

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """Ordered `(group_name, regex over the '/'-joined parameter path)`; last is the head."""
        stages = tuple((f'stage{s}', rf'features_{s}_\d+/.*') for s in range(1, 8))
        return (
            ('stem', 'features_0/.*'),
            *stages,
            ('head_conv', 'features_8/.*'),
            ('head', 'fc/.*'),
        )

    @property
    def cut_points(self) -> dict[str, str]:
        """`stage{s}` (1-based) -> the group of the same name, and `head`."""
        stages = {f'stage{s}': f'stage{s}' for s in range(1, len(_STAGES) + 1)}
        return {**stages, 'head': 'head'}

    @property
    def cut_point_aliases(self) -> dict[str, str]:
        """Old names `features_{i}` (torchvision's child index) for cut points and groups."""
        names = [name for name, _ in self.layer_groups[:-1]]
        return {f'features_{i}': name for i, name in enumerate(names)}

    def official_frozen_groups(self, k: int, freeze_stem: bool = False) -> tuple[str, ...]:
        """Groups frozen by `freeze_layers=k`, read over torchvision's `features` children.

        There is no original TL-DMI code for this model (LOMMA's wrapper has only two
        children, `features` and `avgpool`). `k > 0` freezes children `i <= k` of
        `features` (0 stem, 1-7 the stages, 8 the head conv); `k == 0` freezes the whole
        backbone (a linear probe), as for the other architectures.

        Args:
          k: the `freeze_layers` value, 0 <= k <= 8.
          freeze_stem: unused (the stem is frozen whenever anything is).

        Returns:
          Frozen group names in forward order.

        Raises:
          ValueError: if `k` is out of range.
        """
        del freeze_stem
        body = tuple(name for name, _ in self.layer_groups[:-1])
        if not 0 <= k < len(body):
            raise ValueError(f'freeze_layers must be in [0, {len(body) - 1}], got {k}')
        return body if k == 0 else body[: k + 1]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
          x: [B, H, W, C] float32 in [0, 1] (64 x 64 in the CelebA setting; H, W >= 32).
          train: use batch statistics, update the running ones and apply stochastic depth
            (needs the 'dropout' rng).

        Returns:
          `(features, logits)`: [B, feat_dim] (global average pool of `features_8`) and
          [B, num_classes].
        """
        x = ConvBNAct(self._width(_STAGES[0][3]), 3, 2, name='features_0')(x, train)
        total = sum(self.depths)
        index = 0
        for s, ((expand, kernel, stride, _, out, _), depth) in enumerate(
            zip(_STAGES, self.depths, strict=True), start=1
        ):
            for j in range(depth):
                x = MBConv(
                    self._width(out),
                    expand,
                    kernel,
                    stride if j == 0 else 1,
                    drop_prob=self.stochastic_depth_prob * index / total,
                    name=f'features_{s}_{j}',
                )(x, train)
                index += 1
        x = ConvBNAct(self.feat_dim, name='features_8')(x, train)
        features = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform'),
            bias_init=_torch_linear_bias(features.shape[-1]),
            name='fc',
        )(features)
        return features, logits


class EfficientNetB0(EfficientNet):
    """EfficientNet-B0 (width 1.0, depth 1.0; 1280-d features)."""


class EfficientNetB1(EfficientNet):
    """EfficientNet-B1 (width 1.0, depth 1.1; 1280-d features)."""

    depth_mult: float = 1.1


class EfficientNetB2(EfficientNet):
    """EfficientNet-B2 (width 1.1, depth 1.2; 1408-d features)."""

    width_mult: float = 1.1
    depth_mult: float = 1.2


class _TinyEfficientNetB0(EfficientNetB0):
    """B0 layout (same names) at 1/8 width (channels >= 8), one block per stage, for tests."""

    width_mult: float = 0.125
    stage_depths: Sequence[int] = (1,) * 7


ARCHS = {  # name: (class, input size it is used at); collected by `models.ARCHS`.
    'efficientnet_b0': (EfficientNetB0, 64),
    'efficientnet_b1': (EfficientNetB1, 64),
    'efficientnet_b2': (EfficientNetB2, 64),
    'efficientnet_b0_tiny': (_TinyEfficientNetB0, 32),  # For tests and runlocal.
}
