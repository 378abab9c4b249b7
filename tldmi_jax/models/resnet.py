"""torchvision ResNets (v1.5) at 224x224, the high-resolution (PPA) TL-DMI targets.

conv1 7x7/2 (no bias) -> bn1 -> ReLU -> max-pool 3x3/2 (pad 1) -> layer1..layer4 -> global
average pool (the features) -> `fc`. ResNet-18 uses BasicBlocks [2, 2, 2, 2]; ResNet-101 and
ResNet-152 use Bottlenecks [3, 4, 23, 3] and [3, 8, 36, 3] with the stride on the 3x3 conv
(torchvision v1.5); the first block of a stage whose shape changes has a 1x1 conv + BN
`downsample` shortcut. Parameters at 1000 classes (torchvision's): 11,689,512 (ResNet-18),
44,549,160 (ResNet-101), 60,192,808 (ResNet-152).

Parameter paths: `conv1/kernel`, `bn1/{scale,bias}`, `layer{L}_{b}/{conv1,bn1,conv2,bn2,conv3,
bn3,downsample_conv,downsample_bn}/...` (b counts from 0, as torchvision's `layer{L}.{b}`),
`fc/{kernel,bias}`. Layer groups: `stem` (conv1 + bn1), `layer1`..`layer4`, `head` (fc).
Cut points: `stage{L}` is group `layer{L}` (both 1-based), and `head`; the old cut-point names
`layer{L}` are aliases.

TL-DMI freezing: DaredEVAL's `freeze_layers=6` (`OFFICIAL_FREEZE_LAYERS`) trains layer4 and
fc: theta_C = 8,393,728 + 513,000 = 8,906,728 parameters on ResNet-18 at 1000 classes,
14,964,736 + 1,085,970 = 16,050,706 on ResNet-152 at 530 classes (FaceScrub).
"""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.layers import BatchNorm, frozen_children, max_pool, torch_conv


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3 (stride s) -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU."""

    width: int
    stride: int

    EXPANSION: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = torch_conv(self.width, 3, self.stride, 'conv1')(x)
        y = nn.relu(BatchNorm(name='bn1')(y, train))
        y = torch_conv(self.width, 3, 1, 'conv2')(y)
        y = BatchNorm(name='bn2')(y, train)
        return nn.relu(y + _shortcut(x, self.width, self.stride, train))


class Bottleneck(nn.Module):
    """torchvision v1.5 Bottleneck: 1x1 -> 3x3 (stride s) -> 1x1 (4x width), + shortcut."""

    width: int
    stride: int

    EXPANSION: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = torch_conv(self.width, 1, 1, 'conv1')(x)
        y = nn.relu(BatchNorm(name='bn1')(y, train))
        y = torch_conv(self.width, 3, self.stride, 'conv2')(y)
        y = nn.relu(BatchNorm(name='bn2')(y, train))
        y = torch_conv(self.width * self.EXPANSION, 1, 1, 'conv3')(y)
        y = BatchNorm(name='bn3')(y, train)
        return nn.relu(y + _shortcut(x, self.width * self.EXPANSION, self.stride, train))


def _shortcut(x: jax.Array, out_width: int, stride: int, train: bool) -> jax.Array:
    """Identity, or torchvision's `downsample` (1x1 conv + BN) when the shape changes.

    Called inside a block's compact `__call__`, so the submodules belong to that block.
    """
    if stride == 1 and x.shape[-1] == out_width:
        return x
    x = torch_conv(out_width, 1, stride, 'downsample_conv')(x)
    return BatchNorm(name='downsample_bn')(x, train)


class ResNet(nn.Module):
    """torchvision-layout ResNet classifier returning `(features, logits)`.

    Attributes:
      num_classes: number of output logits.
      stage_blocks: blocks per stage (layer1..layer4).
      bottleneck: use Bottleneck blocks (ResNet-50 and deeper) instead of BasicBlocks.
      widths: base width of each stage (Bottleneck outputs are 4x this).
      stem_width: width of conv1.
    """

    num_classes: int
    stage_blocks: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64

    # DaredEVAL's TL-DMI `freeze_layers` (fine-tunes layer4 + fc).
    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = 6

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """Ordered `(group_name, regex over the '/'-joined parameter path)`; last is the head."""
        layers = tuple(
            (f'layer{s + 1}', rf'layer{s + 1}_\d+/.*') for s in range(len(self.stage_blocks))
        )
        return (('stem', '(conv1|bn1)/.*'), *layers, ('head', 'fc/.*'))

    @property
    def cut_points(self) -> dict[str, str]:
        """`stage{L}` -> group `layer{L}` (both 1-based), and `head`."""
        stages = {f'stage{s + 1}': f'layer{s + 1}' for s in range(len(self.stage_blocks))}
        return {**stages, 'head': 'head'}

    @property
    def cut_point_aliases(self) -> dict[str, str]:
        """Old names: `layer{L}` (torchvision's) is `stage{L}`."""
        return {f'layer{s + 1}': f'stage{s + 1}' for s in range(len(self.stage_blocks))}

    def official_frozen_groups(self, k: int, freeze_stem: bool = False) -> tuple[str, ...]:
        """Groups frozen by DaredEVAL's TL-DMI `freeze_layers=k` on a torchvision ResNet.

        `k > 0` freezes children `i <= k` of [conv1, bn1, relu, maxpool, layer1, ..., layer4]:
        k in 1..3 freezes `stem`, k = 4 adds layer1, ..., k = 6 freezes stem and layer1-3.
        `k == 0` follows the original TL-DMI code's special case and freezes the whole
        backbone (a linear probe: `head` trains); read literally as `i <= 0` it would freeze
        conv1 but not bn1, which is not a group boundary (conv1 and bn1 form `stem`).

        Args:
          k: the `freeze_layers` value, >= 0.
          freeze_stem: unused (the stem is always frozen when k > 0).

        Returns:
          Frozen group names in forward order.

        Raises:
          ValueError: if `k < 0`.
        """
        del freeze_stem
        # Child index of stem is 1 (bn1); of layer{L} is 3 + L.
        first_index = (1, *(4 + s for s in range(len(self.stage_blocks))))
        return frozen_children(self.layer_groups, k, first_index)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
          x: [B, H, W, C] float32 in [0, 1] (224 x 224 for the PPA setting).
          train: use batch statistics and update the running ones.

        Returns:
          `(features, logits)`: [B, widths[-1] * expansion] and [B, num_classes].
        """
        block = Bottleneck if self.bottleneck else BasicBlock
        x = torch_conv(self.stem_width, 7, 2, 'conv1')(x)
        x = nn.relu(BatchNorm(name='bn1')(x, train))
        x = max_pool(x, 3, 2, 1)
        for s, (blocks, width) in enumerate(zip(self.stage_blocks, self.widths, strict=True)):
            for b in range(blocks):
                stride = 2 if (b == 0 and s > 0) else 1
                x = block(width, stride, name=f'layer{s + 1}_{b}')(x, train)
        features = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name='fc')(features)
        return features, logits


class ResNet18(ResNet):
    """ResNet-18 (BasicBlock [2, 2, 2, 2])."""


class ResNet101(ResNet):
    """ResNet-101 (Bottleneck [3, 4, 23, 3])."""

    stage_blocks: Sequence[int] = (3, 4, 23, 3)
    bottleneck: bool = True


class ResNet152(ResNet):
    """ResNet-152 (Bottleneck [3, 8, 36, 3])."""

    stage_blocks: Sequence[int] = (3, 8, 36, 3)
    bottleneck: bool = True


class _TinyResNet18(ResNet18):
    """ResNet-18 layout (same names) with one block per stage and narrow widths, for tests."""

    stage_blocks: Sequence[int] = (1, 1, 1, 1)
    widths: Sequence[int] = (8, 8, 16, 16)
    stem_width: int = 8


ARCHS = {  # name: (class, input size it is used at); collected by `models.ARCHS`.
    'resnet18': (ResNet18, 224),
    'resnet101': (ResNet101, 224),
    'resnet152': (ResNet152, 224),
    'resnet18_tiny': (_TinyResNet18, 32),  # Same parameter names, for tests and runlocal.
}
