"""GAN priors: key mappings of the GMI, KEDMI and PLG-MI checkpoints.

The originals save a GAN as two files, the generator and the discriminator (`*_G.tar` and
`*_D.tar` of GMI/KEDMI/TL-DMI, PLG-MI's `gen_latest.pth.tar` and `dis_latest.pth.tar`).
Each half is a kind of `tldmi_jax.interop.kinds.KINDS` (`gmi_generator`, `gmi_critic`,
...) whose rules are here; `tldmi_jax.interop.gan_priors.convert_prior` converts both
halves of a family into one prior directory.

Source key layouts (torch module paths; `n` stride-2 stages, 4 at 64 px):

- DCGAN `Generator` (GMI, KEDMI): `l1.{0: Linear (no bias), 1: BatchNorm1d}`,
  `l2_5.{i}.{0: ConvTranspose2d (no bias), 1: BatchNorm2d}` for i < n - 1, and the last
  `l2_5.{n-1}: ConvTranspose2d` (with bias) before the sigmoid.
- `DGWGAN` (GMI critic): `ls.0: Conv2d`, `ls.{i+1}.{0: Conv2d, 1: InstanceNorm2d(affine)}`
  for 1 <= i < n, `ls.{n+1}: Conv2d(k4)`.
- `MinibatchDiscriminator` (KEDMI): `layer{1..4}.{0: Conv2d, 1: InstanceNorm2d(affine)}`,
  `mbd1.T` [A, B, C], `fc_layer: Linear`.
- PLG-MI `ResNetGenerator`: `l1: Linear`, `block{2..}.{c1, c2, c_sc: Conv2d; b1, b2:
  CategoricalConditionalBatchNorm2d}` (`weights.weight`, `biases.weight` embeddings and the
  running statistics), `b6: BatchNorm2d`, `conv6: Conv2d`.
- PLG-MI `SNResNetProjectionDiscriminator`: `block{1..5}.{c1, c2, c_sc}`, `l6: Linear`,
  `l_y: Embedding`, all under `torch.nn.utils.spectral_norm` (`weight_orig`, `weight_u`,
  `weight_v`; the power-iteration vectors go to the 'spectral' collection).

Layouts: ConvTranspose2d `weight` [in, out, kh, kw] -> `kernel` [kh, kw, out, in]
(`transpose(2, 3, 1, 0)`, no flip: `tldmi_jax.priors.layers.ConvTranspose` uses torch's tap
order); InstanceNorm `weight/bias` -> `scale/bias`; spectral norm `weight_orig` -> the
kernel, `weight_u` -> `spectral/<layer>/u`, `weight_v` [in*kh*kw] in (in, kh, kw) order ->
`spectral/<layer>/v` in our (kh, kw, in) order. The generators reshape the first Linear's
output as torch's NCHW view, so that Linear needs no permutation.

PLG-MI output range: the original generator returns the raw `tanh` and feeds it to the
target as an image. A converted PLG-MI prior therefore records `out_act='tanh'` in its spec
(`CONVERTED_DEFAULTS`), which reproduces the original; pass `options={'out_act': 'unit'}`
for the [0, 1] output of priors trained here.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import numpy as np

from tldmi_jax import priors
from tldmi_jax.interop.mapping import Rule, batch_norm, conv, linear, linear_kernel, oihw_to_hwio
from tldmi_jax.priors import gmi

# Options a converted prior gets unless the caller overrides them.
CONVERTED_DEFAULTS: dict[str, dict[str, Any]] = {'plgmi': {'out_act': 'tanh'}}


@dataclasses.dataclass(frozen=True)
class PriorKinds:
    """The two `convert.KINDS` entries whose checkpoints make up one prior family."""

    generator: str
    discriminator: str


PRIORS: dict[str, PriorKinds] = {
    'gmi': PriorKinds('gmi_generator', 'gmi_critic'),
    'kedmi': PriorKinds('kedmi_generator', 'kedmi_discriminator'),
    'plgmi': PriorKinds('plgmi_generator', 'plgmi_discriminator'),
}

# ---------------------------------------------------------------------------------------
# Rules of single layers.


def iohw_to_hwoi(w: np.ndarray) -> np.ndarray:
    """ConvTranspose2d weight [in, out, kh, kw] -> our kernel [kh, kw, out, in]."""
    if w.ndim != 4:
        raise ValueError(f'expected a 4-d transposed-conv weight, got shape {w.shape}')
    return np.transpose(w, (2, 3, 1, 0))


def conv_transpose(src: str, dst: str, bias: bool = True) -> list[Rule]:
    """`nn.ConvTranspose2d` at `src` -> `priors.layers.ConvTranspose` at `dst`."""
    rules = [Rule(f'{src}.weight', f'params/{dst}/kernel', iohw_to_hwoi)]
    if bias:
        rules.append(Rule(f'{src}.bias', f'params/{dst}/bias'))
    return rules


def instance_norm(src: str, dst: str) -> list[Rule]:
    """`nn.InstanceNorm2d(affine=True)` (no running statistics) -> `priors.layers.InstanceNorm`."""
    return [Rule(f'{src}.weight', f'params/{dst}/scale'), Rule(f'{src}.bias', f'params/{dst}/bias')]


def conditional_batch_norm(src: str, dst: str) -> list[Rule]:
    """PLG-MI `CategoricalConditionalBatchNorm2d` -> `CategoricalConditionalBatchNorm`."""
    return [
        Rule(f'{src}.weights.weight', f'params/{dst}/scale/embedding'),
        Rule(f'{src}.biases.weight', f'params/{dst}/bias/embedding'),
        *batch_norm(src, f'{dst}/bn', scale=False, bias=False),
    ]


def spectral_v_conv(kh: int, kw: int) -> Callable[[np.ndarray], np.ndarray]:
    """torch `weight_v` [in*kh*kw] (in, kh, kw order) -> our `v` in (kh, kw, in) order."""

    def transform(v: np.ndarray) -> np.ndarray:
        if v.ndim != 1 or v.size % (kh * kw):
            raise ValueError(f'expected a vector of in*{kh}*{kw} entries, got shape {v.shape}')
        return v.reshape(-1, kh, kw).transpose(1, 2, 0).reshape(-1)

    return transform


def _spectral(src: str, dst: str, v_transform=None) -> list[Rule]:
    rules = [Rule(f'{src}.weight_u', f'spectral/{dst}/u')]
    if v_transform is None:
        return [*rules, Rule(f'{src}.weight_v', f'spectral/{dst}/v')]
    return [*rules, Rule(f'{src}.weight_v', f'spectral/{dst}/v', v_transform)]


def spectral_conv(src: str, dst: str, kernel: int) -> list[Rule]:
    """`spectral_norm(nn.Conv2d(k x k))` -> `priors.layers.SNConv`."""
    return [
        Rule(f'{src}.weight_orig', f'params/{dst}/kernel', oihw_to_hwio),
        Rule(f'{src}.bias', f'params/{dst}/bias'),
        *_spectral(src, dst, spectral_v_conv(kernel, kernel)),
    ]


def spectral_linear(src: str, dst: str) -> list[Rule]:
    """`spectral_norm(nn.Linear)` -> `priors.layers.SNDense` (u [out], v [in] as torch)."""
    return [
        Rule(f'{src}.weight_orig', f'params/{dst}/kernel', linear_kernel),
        Rule(f'{src}.bias', f'params/{dst}/bias'),
        *_spectral(src, dst),
    ]


def spectral_embedding(src: str, dst: str) -> list[Rule]:
    """`spectral_norm(nn.Embedding)` -> `priors.layers.SNEmbed` (u [N], v [F] as torch)."""
    return [Rule(f'{src}.weight_orig', f'params/{dst}/embedding'), *_spectral(src, dst)]


# ---------------------------------------------------------------------------------------
# Mapping functions (model -> rules), one per architecture.


def dcgan_generator(model: nn.Module) -> list[Rule]:
    """GMI/KEDMI `Generator` -> `priors.gmi.Generator` (`l1`, `l1_bn`, `deconv{i}`, `bn{i}`)."""
    n = gmi.num_doublings(model.image_size)
    rules = [*linear('l1.0', 'l1', bias=False), *batch_norm('l1.1', 'l1_bn')]
    for i in range(n - 1):
        rules += conv_transpose(f'l2_5.{i}.0', f'deconv{i + 1}', bias=False)
        rules += batch_norm(f'l2_5.{i}.1', f'bn{i + 1}')
    return [*rules, *conv_transpose(f'l2_5.{n - 1}', f'deconv{n}')]


def dgwgan(model: nn.Module) -> list[Rule]:
    """GMI `DGWGAN` -> `priors.gmi.DGWGAN` (`conv1`, `conv{i}` + `norm{i}`, `out`)."""
    n = gmi.num_doublings(model.image_size)
    rules = conv('ls.0', 'conv1')
    for i in range(2, n + 1):
        rules += conv(f'ls.{i}.0', f'conv{i}')
        rules += instance_norm(f'ls.{i}.1', f'norm{i}')
    return [*rules, *conv(f'ls.{n + 1}', 'out')]


def minibatch_discriminator(model: nn.Module) -> list[Rule]:
    """KEDMI `MinibatchDiscriminator` -> `priors.kedmi.MinibatchDiscriminator`."""
    del model  # Four conv layers at every size.
    rules = []
    for i in range(1, 5):
        rules += conv(f'layer{i}.0', f'conv{i}')
        rules += instance_norm(f'layer{i}.1', f'norm{i}')
    return [*rules, Rule('mbd1.T', 'params/mbd/T'), *linear('fc_layer', 'fc')]


def resnet_generator(model: nn.Module) -> list[Rule]:
    """PLG-MI `ResNetGenerator` -> `priors.plgmi.ResNetGenerator` (conditional)."""
    blocks = int(round(math.log2(model.image_size / model.bottom_width)))
    rules = linear('l1', 'l1')
    for i in range(2, blocks + 2):
        b = f'block{i}'
        for name in ('c1', 'c2', 'c_sc'):
            rules += conv(f'{b}.{name}', f'{b}/{name}')
        for name in ('b1', 'b2'):
            rules += conditional_batch_norm(f'{b}.{name}', f'{b}/{name}')
    return [*rules, *batch_norm('b6', 'b6'), *conv('conv6', 'conv6')]


def snresnet_discriminator(model: nn.Module) -> list[Rule]:
    """PLG-MI `SNResNetProjectionDiscriminator` -> `priors.plgmi.SNResNetProjection...`."""
    rules = []
    for i in range(1, 6):
        b = f'block{i}'
        for name, kernel in (('c1', 3), ('c2', 3), ('c_sc', 1)):
            rules += spectral_conv(f'{b}.{name}', f'{b}/{name}', kernel)
    rules += spectral_linear('l6', 'l6')
    if model.num_classes > 0:
        rules += spectral_embedding('l_y', 'l_y')
    return rules


# ---------------------------------------------------------------------------------------
# Models of the halves.


def prior_modules(
    family: str, arch: str, num_classes: int, image_size: int, **options
) -> tuple[nn.Module, nn.Module, dict]:
    """`(generator, discriminator, spec)` of a converted prior.

    Args:
      family: a `priors.FAMILIES` name.
      arch: `family` (the original widths) or `f'{family}_tiny'` (the family's tiny widths).
      num_classes: the target's classes (ignored for gmi).
      image_size: output side.
      **options: prior options over `CONVERTED_DEFAULTS` and the family's defaults.

    Raises:
      ValueError: an arch of another family, or options the family does not have.
    """
    tiny = f'{family}_tiny'
    if arch not in (family, tiny):
        raise ValueError(f'A {family} prior has arch {family!r} or {tiny!r}, not {arch!r}.')
    options = {**CONVERTED_DEFAULTS.get(family, {}), **options}
    return priors.build_modules(
        family,
        num_classes=num_classes,
        image_size=image_size,
        tiny=arch == tiny,
        **options,
    )


def half_builder(family: str, half: str) -> Callable[..., tuple[nn.Module, dict]]:
    """The `Kind.build` of one half: `(arch, num_classes, image_size, **options) ->
    (module, abstract variables of that half)`."""
    if half not in ('generator', 'discriminator'):
        raise ValueError(f"half must be 'generator' or 'discriminator', got {half!r}.")

    def build(arch: str, num_classes: int, image_size: int, **options):
        g, d, spec = prior_modules(family, arch, num_classes, image_size, **options)
        module = g if half == 'generator' else d
        return module, priors.abstract_variables(spec)[half]

    return build


# ---------------------------------------------------------------------------------------
# Assembly.
