"""face.evoLVe IR backbones (IR-50, IR-152) with the TL-DMI head, at 64 or 112 px.

Structure of face.evoLVe `Backbone` with `bottleneck_IR` units, as used by the original
`models/evolve.py` and `models/classify.py` (`IR152`, `FaceNet64`, `FaceNet`):

- `input_layer`: Conv3x3(64, no bias) -> BN -> PReLU(64).
- `body_{i}` (global unit index i): four stages of widths 64/128/256/512; the first unit of
  every stage has stride 2. Residual branch BN -> Conv3x3 -> PReLU -> Conv3x3(stride s) -> BN;
  shortcut `MaxPool2d(1, s)` (subsampling) when the width is unchanged, else
  Conv1x1(stride s) + BN.
- `output_layer`: BN2d -> Dropout(0.5) -> flatten (NCHW order) -> Linear(512) -> BN1d, whose
  output is the feature vector; then the classifier `fc`.

At 64 px the body output is 4x4x512 (8192 inputs to `output_layer/fc`), at 112 px 7x7x512.
Layer groups: `stem` (`input_layer`), `body_0` ... `body_{n-1}`, `head` (`output_layer`, `fc`).
Cut points: `stage{s}` (1-based) is the first unit of stage s, and `head`.
"""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.models.layers import BatchNorm, Conv, PReLU

_PAD1 = ((1, 1), (1, 1))


class InputLayer(nn.Module):
    """Stem: Conv3x3 (stride 1, pad 1, no bias) -> BN -> PReLU."""

    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv(self.width, (3, 3), padding=_PAD1, use_bias=False, name='conv')(x)
        x = BatchNorm(name='bn')(x, train)
        return PReLU(name='prelu')(x)


class BottleneckIR(nn.Module):
    """face.evoLVe `bottleneck_IR` unit.

    Attributes:
      depth: output channels.
      stride: stride of the second conv and of the shortcut.
    """

    depth: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = self.stride
        if x.shape[-1] == self.depth:
            # torch MaxPool2d(kernel_size=1, stride=s) is plain subsampling.
            shortcut = x[:, ::s, ::s, :]
        else:
            shortcut = Conv(
                self.depth,
                (1, 1),
                strides=(s, s),
                padding='VALID',
                use_bias=False,
                name='shortcut_conv',
            )(x)
            shortcut = BatchNorm(name='shortcut_bn')(shortcut, train)
        r = BatchNorm(name='bn1')(x, train)
        r = Conv(self.depth, (3, 3), padding=_PAD1, use_bias=False, name='conv1')(r)
        r = PReLU(name='prelu')(r)
        r = Conv(self.depth, (3, 3), strides=(s, s), padding=_PAD1, use_bias=False, name='conv2')(r)
        r = BatchNorm(name='bn2')(r, train)
        return r + shortcut


class OutputLayer(nn.Module):
    """Head: BN2d -> Dropout -> flatten (NCHW order) -> Dense -> BN1d."""

    feat_dim: int = 512
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = BatchNorm(name='bn2d')(x, train)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        # NCHW flatten order, so torch Linear weights convert without permutation.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = nn.Dense(self.feat_dim, name='fc')(x)
        return BatchNorm(name='bn1d')(x, train)


class IResNet(nn.Module):
    """IR backbone + TL-DMI head, returning `(features, logits)`.

    Attributes:
      num_classes: number of output logits.
      stage_units: units per stage ((3, 4, 14, 3) for IR-50, (3, 8, 36, 3) for IR-152).
      widths: width of each stage.
      stem_width: width of `input_layer`.
      feat_dim: feature (embedding) size.
      dropout_rate: dropout before `output_layer/fc`; needs the 'dropout' rng when training.
    """

    num_classes: int
    stage_units: Sequence[int] = (3, 4, 14, 3)
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    feat_dim: int = 512
    dropout_rate: float = 0.5

    # `freeze_layers` of the released TL-DMI config; None where there is none.
    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = None

    @property
    def num_units(self) -> int:
        return sum(self.stage_units)

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """Ordered `(group_name, regex over the '/'-joined parameter path)`; last is the head."""
        body = tuple((f'body_{i}', f'body_{i}/.*') for i in range(self.num_units))
        return (('stem', 'input_layer/.*'), *body, ('head', '(output_layer|fc)/.*'))

    @property
    def cut_points(self) -> dict[str, str]:
        """`stage{s}` (1-based) -> the first unit of stage s (`body_{i}`), and `head`."""
        points, first = {}, 0
        for s, units in enumerate(self.stage_units):
            points[f'stage{s + 1}'] = f'body_{first}'
            first += units
        return {**points, 'head': 'head'}

    @property
    def cut_point_aliases(self) -> dict[str, str]:
        """None: the IR models always used `stage{s}`."""
        return {}

    def official_frozen_groups(self, k: int, freeze_stem: bool = False) -> tuple[str, ...]:
        """Groups frozen by the original code's `freeze_layers=k`.

        `k == 0` freezes nothing; `k > 0` freezes body units `0..k`. The original code means
        to freeze the stem too but misspells `requires_grad`, so the stem stays trainable
        unless `freeze_stem` is set.

        Args:
          k: the original `freeze_layers` value, >= 0.
          freeze_stem: also freeze `stem` (the paper's intent) when `k > 0`.

        Returns:
          Frozen group names in forward order.

        Raises:
          ValueError: if `k < 0`.
        """
        if k < 0:
            raise ValueError(f'freeze_layers must be >= 0, got {k}')
        if k == 0:
            return ()
        body = tuple(f'body_{i}' for i in range(min(k + 1, self.num_units)))
        return (('stem',) if freeze_stem else ()) + body

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
          x: [B, H, W, C] float32 in [0, 1] (H = W = 64 or 112 for the released models).
          train: use batch statistics, update the running ones and apply dropout.

        Returns:
          `(features, logits)`: [B, feat_dim] and [B, num_classes].
        """
        x = InputLayer(self.stem_width, name='input_layer')(x, train)
        index = 0
        for units, width in zip(self.stage_units, self.widths, strict=True):
            for u in range(units):
                x = BottleneckIR(width, 2 if u == 0 else 1, name=f'body_{index}')(x, train)
                index += 1
        features = OutputLayer(self.feat_dim, self.dropout_rate, name='output_layer')(x, train)
        logits = nn.Dense(self.num_classes, name='fc')(features)
        return features, logits


class IR152(IResNet):
    """IR-152 at 64x64 (MS-Celeb-1M pretrained): the TL-DMI IR152 target."""

    stage_units: Sequence[int] = (3, 8, 36, 3)
    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = 46


class FaceNet64(IResNet):
    """IR-50 at 64x64: the TL-DMI FaceNet64 target."""

    OFFICIAL_FREEZE_LAYERS: ClassVar[int | None] = 5


class FaceNet(IResNet):
    """IR-50 at 112x112: the evaluation model (inputs are upsampled to 112 px)."""


class _TinyIR152(IR152):
    """IR layout (same names) with one unit per stage and narrow widths, for tests."""

    stage_units: Sequence[int] = (1, 1, 1, 1)
    widths: Sequence[int] = (8, 16, 16, 32)
    stem_width: int = 8
    feat_dim: int = 16


class _TinyFaceNet64(FaceNet64):
    """Tiny FaceNet64 (one unit per stage, narrow widths), for tests."""

    stage_units: Sequence[int] = (1, 1, 1, 1)
    widths: Sequence[int] = (8, 16, 16, 32)
    stem_width: int = 8
    feat_dim: int = 16


class _TinyFaceNet(FaceNet):
    """Tiny FaceNet (one unit per stage, narrow widths), for tests."""

    stage_units: Sequence[int] = (1, 1, 1, 1)
    widths: Sequence[int] = (8, 16, 16, 32)
    stem_width: int = 8
    feat_dim: int = 16


ARCHS = {  # name: (class, input size it is used at); collected by `models.ARCHS`.
    'ir152': (IR152, 64),
    'facenet64': (FaceNet64, 64),
    'ir50': (FaceNet64, 64),  # FaceNet64 is TL-DMI's IR-50 at 64 px.
    'facenet': (FaceNet, 112),  # The evaluation model.
    'ir152_tiny': (_TinyIR152, 16),  # Same parameter names, for tests and runlocal.
    'facenet64_tiny': (_TinyFaceNet64, 16),
    'facenet_tiny': (_TinyFaceNet, 32),
}
