"""torchvision DenseNet-121 and DenseNet-169 at 224x224, high-resolution (PPA) targets.

torchvision layout (`densenet121`, `densenet169`; growth rate 32, bottleneck width
`bn_size * growth = 128`, 64 initial features, compression 0.5, no dropout):

- stem: `conv0` 7x7/2 (no bias) -> `norm0` -> ReLU -> max-pool 3x3/2 (pad 1);
- `denseblock{i}` (i = 1..4, blocks of (6, 12, 24, 16) or (6, 12, 32, 32) layers):
  `denselayer{j}` (j from 1) is BN-ReLU-conv1x1 (`norm1`, `conv1`, to 128) -> BN-ReLU-conv3x3
  (`norm2`, `conv2`, to 32) on the concatenation of the block input and every earlier
  layer's output; the block returns that concatenation plus the last output;
- `transition{i}` (after blocks 1-3): BN-ReLU-conv1x1 (`norm`, `conv`, halving the
  channels) -> average pool 2x2/2;
- `norm5` -> ReLU -> global average pool: the features (1024-d on DenseNet-121, 1664-d on
  DenseNet-169) -> `classifier` (Linear).

Parameter paths are torchvision's module paths without the `features.` prefix and with '/'
for '.': `conv0/kernel`, `denseblock2/denselayer7/norm1/{scale,bias}`,
`transition3/conv/kernel`, `norm5/...`, `classifier/{kernel,bias}`. Convolutions have no
bias; BatchNorm is torch's default (eps 1e-5, momentum 0.1). Parameters at 1000 classes
(torchvision's): 7,978,856 (DenseNet-121), 14,149,480 (DenseNet-169).

Layer groups, in forward order: `stem` (conv0 + norm0), `denseblock1`, `transition1`,
`denseblock2`, `transition2`, `denseblock3`, `transition3`, `denseblock4` (with `norm5`,
the final BatchNorm of the trunk), `head` (classifier). Cut points: `stage{L}` is group
`denseblock{L}` (both 1-based), and `head`; a transition belongs to neither stage's cut
point (`stage{L+1}` freezes `transition{L}`; `fine_tune_from='transition{L}'` trains it).

TL-DMI freezing. DaredEVAL's rule for torchvision ResNets freezes the children `i <= k` of
the feature extractor; a DenseNet has no such rule in the original code. The analogue here
counts the children of torchvision's `features` Sequential, [conv0, norm0, relu0, pool0,
denseblock1, transition1, ..., transition3, denseblock4, norm5], and the official value
`freeze_layers=9` freezes the stem through `transition3`: denseblock4, norm5 and the
classifier train (as layer4 + fc do on a ResNet): 2,158,080 + 2,048 + 1,025,000 =
3,185,128 parameters on DenseNet-121 and 5,913,600 + 3,328 + 1,665,000 = 7,581,928 on
DenseNet-169 at 1000 classes. `freeze_layers=0` is the linear probe of the ResNet rule.
"""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.layers import BatchNorm, frozen_children, max_pool, torch_conv


class DenseLayer(nn.Module):
    """torchvision `_DenseLayer`: BN-ReLU-conv1x1 (bottleneck) -> BN-ReLU-conv3x3 (growth)."""

    growth_rate: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(BatchNorm(name='norm1')(x, train))
        y = torch_conv(self.bn_size * self.growth_rate, 1, 1, 'conv1')(y)
        y = nn.relu(BatchNorm(name='norm2')(y, train))
        return torch_conv(self.growth_rate, 3, 1, 'conv2')(y)


class DenseBlock(nn.Module):
    """torchvision `_DenseBlock`: each layer sees the concatenation of all earlier outputs."""

    num_layers: int
    growth_rate: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for j in range(self.num_layers):
            new = DenseLayer(self.growth_rate, self.bn_size, name=f'denselayer{j + 1}')(x, train)
            x = jnp.concatenate([x, new], axis=-1)  # torch's channel order: input first.
        return x


class Transition(nn.Module):
    """torchvision `_Transition`: BN-ReLU-conv1x1 to `features` -> average pool 2x2/2."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(BatchNorm(name='norm')(x, train))
        x = torch_conv(self.features, 1, 1, 'conv')(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
    """torchvision-layout DenseNet classifier returning `(features, logits)`.

    Attributes:
      num_classes: number of output logits.
      block_layers: dense layers per block (denseblock1..4).
      growth_rate: channels each dense layer adds.
      bn_size: bottleneck width as a multiple of `growth_rate`.
      init_features: width of conv0.
    """

    num_classes: int
    block_layers: Sequence[int] = (6, 12, 24, 16)
    growth_rate: int = 32
    bn_size: int = 4
    init_features: int = 64

    # Our analogue of DaredEVAL's TL-DMI rule (fine-tunes denseblock4 + norm5 + classifier).
    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = 9

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """Ordered `(group_name, regex over the '/'-joined parameter path)`; last is the head."""
        last = len(self.block_layers)
        groups = [('stem', '(conv0|norm0)/.*')]
        for i in range(1, last):
            groups += [
                (f'denseblock{i}', f'denseblock{i}/.*'),
                (f'transition{i}', f'transition{i}/.*'),
            ]
        groups.append((f'denseblock{last}', f'(denseblock{last}|norm5)/.*'))
        return (*groups, ('head', 'classifier/.*'))

    @property
    def cut_points(self) -> dict[str, str]:
        """`stage{L}` -> group `denseblock{L}` (both 1-based), and `head`."""
        stages = {f'stage{i + 1}': f'denseblock{i + 1}' for i in range(len(self.block_layers))}
        return {**stages, 'head': 'head'}

    @property
    def cut_point_aliases(self) -> dict[str, str]:
        """None: the DenseNets came with the 1-based vocabulary."""
        return {}

    def official_frozen_groups(self, k: int, freeze_stem: bool = False) -> tuple[str, ...]:
        """Groups frozen by `freeze_layers=k` over the children of torchvision's `features`.

        `k > 0` freezes children `i <= k` of [conv0, norm0, relu0, pool0, denseblock1,
        transition1, ..., denseblock4, norm5] (0-based): k in 1..3 freezes `stem`, k = 4
        adds denseblock1, ..., k = 9 (the official value) freezes everything before
        denseblock4, k >= 11 the whole trunk. `k == 0` freezes the whole trunk (a linear
        probe), as the ResNet rule's special case.

        Args:
          k: the `freeze_layers` value, >= 0.
          freeze_stem: unused (the stem is always frozen when k > 0).

        Returns:
          Frozen group names in forward order.

        Raises:
          ValueError: if `k < 0`, or `k` freezes denseblock4 but not norm5, which share a
            group.
        """
        del freeze_stem
        body = tuple(name for name, _ in self.layer_groups[:-1])
        # Child index of the group's last member: stem 1 (norm0); denseblock{i} 2 + 2i,
        # transition{i} 3 + 2i; the last block with norm5 one past its own index.
        last_index = (1, *(4 + i for i in range(len(body) - 2)), 4 + len(body) - 1)
        if k == last_index[-1] - 1:
            raise ValueError(
                f'freeze_layers={k} freezes {body[-1]} but not norm5, which share a group; '
                f'use {k - 1} or {k + 1}.'
            )
        return frozen_children(self.layer_groups, k, last_index)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
          x: [B, H, W, C] float32 in [0, 1] (224 x 224 for the PPA setting).
          train: use batch statistics and update the running ones.

        Returns:
          `(features, logits)`: [B, final width] (1024 on DenseNet-121) and [B, num_classes].
        """
        x = torch_conv(self.init_features, 7, 2, 'conv0')(x)
        x = nn.relu(BatchNorm(name='norm0')(x, train))
        x = max_pool(x, 3, 2, 1)
        width = self.init_features
        for i, layers in enumerate(self.block_layers):
            x = DenseBlock(layers, self.growth_rate, self.bn_size, name=f'denseblock{i + 1}')(
                x, train
            )
            width += layers * self.growth_rate
            if i != len(self.block_layers) - 1:
                width //= 2  # torchvision's compression 0.5.
                x = Transition(width, name=f'transition{i + 1}')(x, train)
        x = nn.relu(BatchNorm(name='norm5')(x, train))
        features = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name='classifier')(features)
        return features, logits


class DenseNet121(DenseNet):
    """DenseNet-121 (blocks (6, 12, 24, 16))."""


class DenseNet169(DenseNet):
    """DenseNet-169 (blocks (6, 12, 32, 32))."""

    block_layers: Sequence[int] = (6, 12, 32, 32)


class _TinyDenseNet121(DenseNet121):
    """DenseNet layout (same names) with two layers per block and narrow widths, for tests."""

    block_layers: Sequence[int] = (2, 2, 2, 2)
    growth_rate: int = 4
    bn_size: int = 2
    init_features: int = 8


ARCHS = {  # name: (class, input size it is used at); collected by `models.ARCHS`.
    'densenet121': (DenseNet121, 224),
    'densenet169': (DenseNet169, 224),
    'densenet121_tiny': (_TinyDenseNet121, 32),  # Same parameter names, for tests.
}
