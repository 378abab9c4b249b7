"""VGG16-BN backbone (torchvision `vgg16_bn.features`) with the TL-DMI head, at 64x64.

Structure of the original `models/classify.py:VGG16`: 13 x (Conv3x3 pad 1 -> BN -> ReLU)
with a 2x2 max-pool after each of the five blocks, flatten (512 x 2 x 2 = 2048 at 64 px),
`BatchNorm1d(2048)` whose bias is frozen at zero (its output is the feature vector), then
`Linear(2048, num_classes)`.

Parameter paths: `conv{block}_{i}/conv/{kernel,bias}`, `conv{block}_{i}/bn/{scale,bias}`,
`head_bn/scale`, `fc/{kernel,bias}`. Each `conv{block}_{i}` (conv + its BN) is one layer
group; `head_bn` + `fc` form the group `head`. Cut points: `stage{b}` (1-based) is the first
conv of block b, `conv{b}_1`; the old names `block{b}` are aliases with the same meaning.
"""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.layers import BatchNorm, Conv, max_pool


class ConvBNReLU(nn.Module):
    """Conv3x3 (pad 1, with bias) -> BatchNorm -> ReLU: one torchvision VGG-BN unit."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name='conv')(x)
        x = BatchNorm(name='bn')(x, train)
        return nn.relu(x)


class VGG(nn.Module):
    """VGG-BN classifier returning `(features, logits)`.

    Attributes:
      num_classes: number of output logits.
      widths: conv width of each block.
      depths: number of convs in each block.
    """

    num_classes: int
    widths: Sequence[int] = (64, 128, 256, 512, 512)
    depths: Sequence[int] = (2, 2, 3, 3, 3)

    # `freeze_layers` of the released TL-DMI config (child index of `vgg16_bn.features`).
    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = 26

    @property
    def conv_names(self) -> tuple[str, ...]:
        """Names of the conv units, in forward order (`conv1_1`, `conv1_2`, ...)."""
        return tuple(
            f'conv{b + 1}_{i + 1}' for b, depth in enumerate(self.depths) for i in range(depth)
        )

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """Ordered `(group_name, regex over the '/'-joined parameter path)`; last is the head."""
        groups = tuple((name, f'{name}/.*') for name in self.conv_names)
        return (*groups, ('head', '(head_bn|fc)/.*'))

    @property
    def cut_points(self) -> dict[str, str]:
        """`stage{b}` (1-based) -> the first conv of block b (`conv{b}_1`), and `head`."""
        stages = {f'stage{b + 1}': f'conv{b + 1}_1' for b in range(len(self.depths))}
        return {**stages, 'head': 'head'}

    @property
    def cut_point_aliases(self) -> dict[str, str]:
        """Old names: `block{b}` is `stage{b}` (both 1-based)."""
        return {f'block{b + 1}': f'stage{b + 1}' for b in range(len(self.depths))}

    def _child_indices(self) -> list[tuple[str, int, int]]:
        """`(conv_name, conv child index, bn child index)` in torchvision `features`."""
        out, index = [], 0
        for b, depth in enumerate(self.depths):
            for i in range(depth):
                out.append((f'conv{b + 1}_{i + 1}', index, index + 1))
                index += 3  # conv, bn, relu
            index += 1  # max-pool
        return out

    def official_frozen_groups(self, k: int, freeze_stem: bool = False) -> tuple[str, ...]:
        """Groups frozen by the original code's `freeze_layers=k`.

        `k == 0` freezes the whole pretrained backbone (a linear probe: `head` trains);
        `k > 0` freezes every child `i <= k` of `vgg16_bn.features` (conv at 0, 3, 7, ...,
        its BN at conv + 1).

        Args:
          k: the original `freeze_layers` value, >= 0.
          freeze_stem: unused (VGG has no separate stem); kept for a common signature.

        Returns:
          Frozen group names in forward order.

        Raises:
          ValueError: if `k < 0`, or if `k` is a conv's child index, which would freeze the
            conv but not its BatchNorm (not a group boundary).
        """
        del freeze_stem
        if k < 0:
            raise ValueError(f'freeze_layers must be >= 0, got {k}')
        if k == 0:
            return self.conv_names
        frozen = []
        for name, conv_index, bn_index in self._child_indices():
            if conv_index == k:
                raise ValueError(
                    f'freeze_layers={k} freezes the conv of {name} but not its BatchNorm; '
                    'use freeze rules instead'
                )
            if bn_index <= k:
                frozen.append(name)
        return tuple(frozen)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
          x: [B, H, W, C] float32 in [0, 1]; H and W divisible by 32 (64 in the paper).
          train: use batch statistics and update the running ones.

        Returns:
          `(features, logits)`: [B, widths[-1] * (H / 32) * (W / 32)] and [B, num_classes].
        """
        for b, (width, depth) in enumerate(zip(self.widths, self.depths, strict=True)):
            for i in range(depth):
                x = ConvBNReLU(width, name=f'conv{b + 1}_{i + 1}')(x, train)
            x = max_pool(x, 2, 2)
        # Flatten in NCHW order so torch Linear/BN1d weights convert without permutation.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        features = BatchNorm(use_bias=False, name='head_bn')(x, train)
        logits = nn.Dense(self.num_classes, name='fc')(features)
        return features, logits


class VGG16(VGG):
    """VGG16-BN at 64x64: the TL-DMI target (`models/classify.py:VGG16`)."""


class _TinyVGG16(VGG):
    """VGG16-BN layout (13 convs, same names) at 1/8 width, for tests at 32 px."""

    widths: Sequence[int] = (8, 16, 32, 64, 64)


ARCHS = {  # name: (class, input size it is used at); collected by `models.ARCHS`.
    'vgg16': (VGG16, 64),
    'vgg16_tiny': (_TinyVGG16, 32),  # Same parameter names, for tests and runlocal.
}
