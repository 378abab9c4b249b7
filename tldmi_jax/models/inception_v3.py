"""torchvision's Inception-v3 classifier (`InceptionV3`), PPA's evaluation model.

`InceptionV3` (arch `inception_v3`, `tldmi_jax.models.ARCHS`, at 299 px) is
torchvision's `inception_v3(aux_logits=False, transform_input=False)`, PPA's evaluation
model: every pool branch (Mixed_5b-5d, 6b-6e, 7b, 7c) averages with the zero padding
counted (torch's default `count_include_pad=True`), dropout 0.5 before `fc`, inputs in
[0, 1] (normalisation is the caller's). torchvision's auxiliary classifier is optional
(`aux_logits=True` builds `AuxLogits` on Mixed_6e; its logits are sown, not returned).
Parameters at 1000 classes: 23,834,568 without the auxiliary classifier, 27,161,264 with
it (torchvision's `inception_v3` weights). Parameter paths are torchvision's module paths
('.' -> '/'): `Conv2d_1a_3x3/conv/kernel`, `Mixed_6b/branch7x7_2/bn/scale`,
`AuxLogits/conv1/conv/kernel`, `fc/kernel`. Layer groups: one per stem conv and per Mixed
block, `AuxLogits` (when built), `head` (fc). Cut points: `stage1` = Mixed_5b (35 px),
`stage2` = Mixed_6a (17 px), `stage3` = Mixed_7a (8 px), and `head`.

Its trunk (`BasicConv`, the A-E blocks, the module names) is `inception.py`'s, shared with
the FID network.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.inception import (
    IMAGE_SIZE,
    MIXED,
    STEM,
    BasicConv,
    Widths,
    mixed_5_6,
    mixed_7,
    stem,
)
from tldmi_jax.models.layers import frozen_children


class InceptionAux(nn.Module):
    """torchvision `InceptionAux` on Mixed_6e: avg-pool 5x5/3 -> 1x1 -> 5x5 -> mean -> fc.

    Needs a 17 x 17 Mixed_6e map (a 299 px input), as in torchvision.
    """

    num_classes: int
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = Widths(self.width_mult)
        x = nn.avg_pool(x, (5, 5), strides=(3, 3))
        x = BasicConv(c(128), name='conv0')(x, train)
        x = BasicConv(c(768), (5, 5), name='conv1')(x, train)
        return nn.Dense(self.num_classes, name='fc')(jnp.mean(x, axis=(1, 2)))


# torchvision `Inception3.children()` in order (pools and dropout hold no parameters), for
# `freeze_layers`; AuxLogits follows Mixed_6e when the model has it.
_TV_CHILDREN = (*STEM[:3], 'maxpool1', *STEM[3:], 'maxpool2', *MIXED)
# Where each stage starts: 35 px (A blocks), 17 px (reduction + C), 8 px (reduction + E).
_TV_STAGES = ('Mixed_5b', 'Mixed_6a', 'Mixed_7a')


class InceptionV3(nn.Module):
    """torchvision `inception_v3` classifier (the PPA evaluation model) -> `(features, logits)`.

    torchvision's `Inception3` with `transform_input=False`: the trunk of `FIDInceptionV3`
    with torchvision's blocks (every pool branch averages with the zero padding counted,
    Mixed_7c included), global average pool (the 2048-d features), dropout, `fc`.

    Attributes:
      num_classes: number of output logits.
      aux_logits: build torchvision's auxiliary classifier `AuxLogits` on Mixed_6e. It runs
        in training mode only (and at init, to create its variables) and its logits are sown
        as `intermediates/aux_logits`; the returned logits are always the main ones.
      dropout_rate: dropout before `fc` in training mode (torchvision's 0.5).
      width_mult: channel multiplier; smaller values give the tiny test variant.
    """

    num_classes: int
    aux_logits: bool = False
    dropout_rate: float = 0.5
    width_mult: float = 1.0

    # No TL-DMI rule for the evaluation model; `official_frozen_groups` still translates any
    # `freeze_layers` value.
    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = None
    IMAGE_SIZE: ClassVar[int] = IMAGE_SIZE

    @property
    def _children(self) -> tuple[str, ...]:
        if not self.aux_logits:
            return _TV_CHILDREN
        i = _TV_CHILDREN.index('Mixed_6e') + 1
        return (*_TV_CHILDREN[:i], 'AuxLogits', *_TV_CHILDREN[i:])

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """Ordered `(group_name, regex over the '/'-joined parameter path)`; last is the head.

        One group per stem conv and per Mixed block (as `FIDInceptionV3`), `AuxLogits`
        (after Mixed_6e, its input) when built, and `head` (fc).
        """
        body = tuple(
            (name, f'{name}/.*') for name in self._children if not name.startswith('maxpool')
        )
        return (*body, ('head', 'fc/.*'))

    @property
    def cut_points(self) -> dict[str, str]:
        """`stage1..3` -> Mixed_5b, Mixed_6a, Mixed_7a (35, 17, 8 px), and `head`."""
        stages = {f'stage{i + 1}': name for i, name in enumerate(_TV_STAGES)}
        return {**stages, 'head': 'head'}

    @property
    def cut_point_aliases(self) -> dict[str, str]:
        """None: this model came with the 1-based vocabulary."""
        return {}

    def official_frozen_groups(self, k: int, freeze_stem: bool = False) -> tuple[str, ...]:
        """Groups frozen by `freeze_layers=k` over torchvision's `Inception3.children()`.

        `k > 0` freezes children `i <= k` (0-based) of [Conv2d_1a_3x3, Conv2d_2a_3x3,
        Conv2d_2b_3x3, maxpool1, Conv2d_3b_1x1, Conv2d_4a_3x3, maxpool2, Mixed_5b, ...,
        Mixed_6e, (AuxLogits), Mixed_7a, Mixed_7b, Mixed_7c] and never `fc`; `k == 0`
        freezes every group but the head (a linear probe), as the ResNet rule.

        Args:
          k: the `freeze_layers` value, >= 0.
          freeze_stem: unused.

        Returns:
          Frozen group names in forward order.

        Raises:
          ValueError: if `k < 0`.
        """
        del freeze_stem
        index = [self._children.index(name) for name, _ in self.layer_groups[:-1]]
        return frozen_children(self.layer_groups, k, index)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
          x: [B, H, W, 3] float32 in [0, 1]; 299 x 299 for the PPA evaluation model (>= 75,
            299 with `aux_logits`).
          train: use batch statistics, update the running ones, apply dropout (needs a
            'dropout' rng) and run `AuxLogits`.

        Returns:
          `(features, logits)`: [B, 2048 * width_mult] and [B, num_classes].
        """
        w = self.width_mult
        x = stem(x, train, w)
        x = mixed_5_6(x, train, w, 'avg_pad')
        if self.aux_logits and (train or self.is_initializing()):
            aux = InceptionAux(self.num_classes, w, name='AuxLogits')(x, train)
            self.sow('intermediates', 'aux_logits', aux)
        x = mixed_7(x, train, w, ('avg_pad', 'avg_pad'))
        features = jnp.mean(x, axis=(1, 2))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, name='fc')(y)
        return features, logits


class _TinyInceptionV3(InceptionV3):
    """Same graph and names at 1/16 width (128-d features), for tests at 75 px."""

    width_mult: float = 1.0 / 16.0
    IMAGE_SIZE: ClassVar[int] = 75


ARCHS = {  # name: (class, input size it is used at); collected by `models.ARCHS`.
    'inception_v3': (InceptionV3, IMAGE_SIZE),  # torchvision's, PPA's evaluation model.
    'inception_v3_tiny': (_TinyInceptionV3, 75),  # Same parameter names, for tests.
}
