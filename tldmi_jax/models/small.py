"""A small CNN for the demo (Fashion-MNIST-sized inputs) and for tests.

`block{i}`: Conv3x3 (same padding) -> BN -> ReLU -> max-pool 2x2, for each width; then
the pooled map is flattened (NCHW order) into the features, optionally projected by a
Dense layer `feat`, and classified by `fc`. Layer groups: `block0` ... `block{n-1}`, `head`
(`feat` + `fc`). Cut points (1-based): `stage{k}` is group `block{k-1}`; the old cut-point
names `block{i}` (0-based) keep their meaning as aliases of `stage{i+1}`.
"""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.layers import BatchNorm, Conv, max_pool


class ConvBlock(nn.Module):
    """Conv3x3 (same) -> BN -> ReLU -> max-pool 2x2."""

    width: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name='conv')(x)
        x = nn.relu(BatchNorm(name='bn')(x, train))
        return max_pool(x, 2, 2)


class SmallCNN(nn.Module):
    """Small conv classifier returning `(features, logits)`.

    Attributes:
      num_classes: number of output logits.
      widths: width of each conv block; each block halves the resolution.
      feat_dim: if set, the features are a Dense projection (`feat`) of the flattened map
        to this size; otherwise the flattened map itself.
    """

    num_classes: int
    widths: Sequence[int] = (32, 64, 128, 256)
    feat_dim: int | None = None

    # There is no released freeze point for this model.
    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = None

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """Ordered `(group_name, regex over the '/'-joined parameter path)`; last is the head."""
        blocks = tuple((f'block{i}', f'block{i}/.*') for i in range(len(self.widths)))
        return (*blocks, ('head', '(feat|fc)/.*'))

    @property
    def cut_points(self) -> dict[str, str]:
        """`stage{k}` (1-based) -> group `block{k-1}`, and `head`."""
        stages = {f'stage{i + 1}': f'block{i}' for i in range(len(self.widths))}
        return {**stages, 'head': 'head'}

    @property
    def cut_point_aliases(self) -> dict[str, str]:
        """Old 0-based names: `block{i}` is `stage{i+1}`."""
        return {f'block{i}': f'stage{i + 1}' for i in range(len(self.widths))}

    def official_frozen_groups(self, k: int, freeze_stem: bool = False) -> tuple[str, ...]:
        """Groups frozen by `freeze_layers=k`, defined here as the first `k` blocks.

        There is no original code for this model: `k` counts frozen blocks from the input,
        so `k == 0` freezes nothing and `k == len(widths)` leaves only the head trainable.

        Args:
          k: number of frozen blocks, 0 <= k <= len(widths).
          freeze_stem: unused; kept for a common signature.

        Returns:
          Frozen group names in forward order.

        Raises:
          ValueError: if `k` is out of range.
        """
        del freeze_stem
        if not 0 <= k <= len(self.widths):
            raise ValueError(f'freeze_layers must be in [0, {len(self.widths)}], got {k}')
        return tuple(f'block{i}' for i in range(k))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
          x: [B, H, W, C] float32 in [0, 1]; H, W >= 2 ** len(widths).
          train: use batch statistics and update the running ones.

        Returns:
          `(features, logits)`: [B, feat_dim or widths[-1] * h * w] and [B, num_classes],
          where h, w are the spatial sizes after the blocks.
        """
        for i, width in enumerate(self.widths):
            x = ConvBlock(width, name=f'block{i}')(x, train)
        features = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        if self.feat_dim is not None:
            features = nn.Dense(self.feat_dim, name='feat')(features)
        logits = nn.Dense(self.num_classes, name='fc')(features)
        return features, logits


class _TinySmallCNN(SmallCNN):
    """Two narrow blocks, for tests at 16 px."""

    widths: Sequence[int] = (8, 16)


ARCHS = {  # name: (class, input size it is used at); collected by `models.ARCHS`.
    'small': (SmallCNN, 32),
    'small_tiny': (_TinySmallCNN, 16),  # Same parameter names, for tests and runlocal.
}
