"""The table of PyTorch checkpoint kinds that `convert.py` maps onto tldmi_jax models.

A kind names one family of PyTorch checkpoints (`vgg16` = the TL-DMI/KEDMI VGG16 target,
`evolve_ir152` = the face.evoLVe MS-Celeb-1M IR-152 backbone, ...). `KINDS` is the one
table of them; adding a kind is one `Kind(...)` entry plus, if its layout is new, a small
mapping function returning `mapping.Rule`s (see `tldmi_jax.interop.classifiers` and
`tldmi_jax.interop.gans`).
"""

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tldmi_jax import models
from tldmi_jax.interop import classifiers, facenet, gans
from tldmi_jax.interop import inception as inception_map
from tldmi_jax.interop.mapping import Rule

# Checks return (errors, notes) about the source state dict.
Check = Callable[[Mapping[str, np.ndarray]], tuple[list[str], list[str]]]

# Ignored for every kind: torch's BatchNorm step counter. Our BatchNorm, like the
# originals' (momentum 0.1, not None), never reads it.
COMMON_IGNORE = ((r'.*\.num_batches_tracked', 'BatchNorm step counter (momentum is fixed)'),)

# The VGG16 head's BatchNorm1d bias is frozen at zero in the original; we accept up to this.
ZERO_BIAS_TOL = 1e-5


class ConversionError(ValueError):
    """The state dict does not map onto the model; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """One family of PyTorch checkpoints and how it maps onto a `tldmi_jax.models` arch.

    Attributes:
      name: the `--kind` value.
      arch: target architecture (`tldmi_jax.models.ARCHS`); `arch=` overrides it (tests
        use the tiny variants).
      rules: mapping function `model -> list[Rule]`.
      description: what the checkpoints are, for help texts.
      ignore: `(regex, reason)`: source keys deliberately not converted (full match).
      aliases: `(regex, replacement)` rewrites of source keys before mapping, for
        variants of one layout (e.g. `fc_layer.0.weight` -> `fc_layer.weight`).
      skip_targets: regexes (full match on '/'-joined paths without the collection) of
        target leaves the kind does not fill; non-empty means a backbone-only conversion
        (no `config.json`; use it as `config.init.checkpoint`).
      num_classes_key: source key whose first dimension is the number of classes.
      checks: extra checks of the source values.
      image_size: input size the checkpoint was trained at (None: the arch's default).
      make_model: `(arch, num_classes, **kwargs) -> module`; targets outside
        `tldmi_jax.models` (e.g. the FID Inception) supply their own.
      example_inputs: `(image_size, channels) -> inputs of model.init` (shapes only).
      build: `(arch, num_classes, image_size, **model_kwargs) -> (module, abstract
        variables)`, replacing `make_model` and `example_inputs` for models whose variables
        are not `model.init(key, *inputs, train=False)` (the GAN halves: one half of a
        prior's variables, 'spectral' collection included).
      classifier: a `tldmi_jax.models` classifier; a complete one gets the `config.json`
        that `load_classifier` reads.
      prior: for a GAN half, its `tldmi_jax.priors` family; such a kind converts only
        together with the other half (`gan_priors.convert_prior`).
    """

    name: str
    arch: str
    rules: Callable[[nn.Module], list[Rule]]
    description: str = ''
    ignore: tuple[tuple[str, str], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    skip_targets: tuple[str, ...] = ()
    num_classes_key: str | None = None
    checks: tuple[Check, ...] = ()
    image_size: int | None = None
    make_model: Callable[..., nn.Module] = models.get_model
    example_inputs: Callable[[int, int], tuple[Any, ...]] = lambda size, channels: (
        jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32),
    )
    build: Callable[..., tuple[nn.Module, dict]] | None = None
    classifier: bool = True
    prior: str | None = None

    @property
    def full_model(self) -> bool:
        return not self.skip_targets


def zero_bias_check(key: str, tol: float = ZERO_BIAS_TOL) -> Check:
    """Checks that a bias the original froze at zero is ~0 (our layer has none).

    Decision: a bias with max |b| <= `tol` is dropped and reported; a larger one is an
    error, because dropping it would shift the features (and logits) by up to |b|.
    """

    def check(state: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
        if key not in state:
            return [], []
        worst = float(np.max(np.abs(state[key]))) if np.size(state[key]) else 0.0
        if worst > tol:
            return [
                f'{key}: max |bias| = {worst:.3g} > {tol:g}; the original freezes this '
                'BatchNorm1d bias at zero and our layer has none, so dropping it would change '
                'the outputs'
            ], []
        return [], [f'{key}: frozen-zero BatchNorm1d bias, max |bias| = {worst:.3g}; dropped']

    return check


def _gan_half(
    name: str,
    family: str,
    half: str,
    rules: Callable[[nn.Module], list[Rule]],
    description: str,
    num_classes_key: str | None = None,
) -> Kind:
    """One half of a GAN prior: its model and shapes come from `tldmi_jax.priors`."""
    return Kind(
        name,
        family,  # arch: the family's original widths; `f'{family}_tiny'` the tiny ones.
        rules,
        description,
        num_classes_key=num_classes_key,
        image_size=64,
        build=gans.half_builder(family, half),
        classifier=False,
        prior=family,
    )


_EVOLVE_HEAD = (
    r'output_layer\..*',
    'face.evoLVe 112-px embedding head (Linear over 7x7x512); TL-DMI trains a new 64-px head',
)

# torchvision DenseNet keys of before 0.3 (`...denselayer1.norm.1.weight`) -> today's
# (`...denselayer1.norm1.weight`), as torchvision's own loader rewrites them.
_DENSENET_OLD_KEYS = (
    (
        r'(.*\.denselayer\d+\.(?:norm|relu|conv))\.([12])\.'
        r'(weight|bias|running_mean|running_var|num_batches_tracked)',
        r'\1\2.\3',
    ),
)


def _torchvision_densenet(depth: int) -> Kind:
    return Kind(
        f'densenet{depth}',
        f'densenet{depth}',
        classifiers.torchvision_densenet,
        f'torchvision densenet{depth} (ImageNet or fine-tuned, any class count); the keys of '
        'checkpoints before torchvision 0.3 (denselayer*.norm.1, conv.1, ...) are accepted',
        aliases=_DENSENET_OLD_KEYS,
        num_classes_key='classifier.weight',
    )


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            'vgg16',
            'vgg16',
            classifiers.tldmi_vgg16,
            'TL-DMI/KEDMI/LOMMA VGG16 target at 64 px (VGG16_88.26.tar): torchvision '
            'vgg16_bn features, BatchNorm1d(2048) and fc_layer',
            ignore=((r'bn\.bias', 'BatchNorm1d bias frozen at zero in the original; checked ~0'),),
            num_classes_key='fc_layer.weight',
            checks=(zero_bias_check('bn.bias'),),
        ),
        Kind(
            'ir152',
            'ir152',
            classifiers.tldmi_ir64,
            'TL-DMI/KEDMI/LOMMA IR152 target at 64 px (IR152_91.16.tar)',
            num_classes_key='fc_layer.weight',
        ),
        Kind(
            'facenet64',
            'facenet64',
            classifiers.tldmi_ir64,
            'TL-DMI/KEDMI/LOMMA FaceNet64 (IR-50) target at 64 px (FaceNet64_88.50.tar)',
            num_classes_key='fc_layer.weight',
        ),
        Kind(
            'facenet',
            'facenet',
            classifiers.tldmi_facenet112,
            'evaluation FaceNet (IR-50 at 112 px, FaceNet_95.88.tar); a Softmax after '
            'fc_layer (fc_layer.0.*) is accepted and dropped: the model returns logits',
            aliases=((r'fc_layer\.0\.(weight|bias)', r'fc_layer.\1'),),
            num_classes_key='fc_layer.weight',
        ),
        Kind(
            'evolve_ir152',
            'ir152',
            classifiers.evolve_backbone,
            'face.evoLVe MS-Celeb-1M IR-152 backbone (pre-training of the IR152 target)',
            ignore=(_EVOLVE_HEAD,),
            skip_targets=('output_layer/.*', 'fc/.*'),
        ),
        # As the original: all 349 keys, the 512-d embedding head included, onto the 112-px
        # IR-50 (the evaluation FaceNet starts from them; FaceNet64 targets leave the head
        # out through their `init.dont_load`).
        Kind(
            'evolve_ir50',
            'facenet',
            classifiers.evolve_embedding,
            'face.evoLVe MS-Celeb-1M IR-50 (backbone_ir50_ms1m_epoch120.pth) with its 112-px '
            'embedding head output_layer: pre-training of the evaluation FaceNet and of '
            'FaceNet64 (whose configs leave output_layer out)',
            skip_targets=('fc/.*',),
        ),
        Kind(
            'evolve_ir50_backbone',
            'facenet64',
            classifiers.evolve_backbone,
            'face.evoLVe MS-Celeb-1M IR-50 without its 112-px output_layer (input_layer and '
            'body only, onto FaceNet64)',
            ignore=(_EVOLVE_HEAD,),
            skip_targets=('output_layer/.*', 'fc/.*'),
        ),
        Kind(
            'vgg16_bn',
            'vgg16',
            classifiers.torchvision_vgg16_bn,
            'torchvision vgg16_bn ImageNet weights (pre-training of the VGG16 target)',
            ignore=((r'classifier\..*', 'ImageNet classifier; TL-DMI builds a new head'),),
            skip_targets=('head_bn/.*', 'fc/.*'),
        ),
        Kind(
            'resnet18',
            'resnet18',
            classifiers.torchvision_resnet,
            'torchvision resnet18 (ImageNet or fine-tuned, any class count)',
            num_classes_key='fc.weight',
        ),
        Kind(
            'resnet101',
            'resnet101',
            classifiers.torchvision_resnet,
            'torchvision resnet101 (ImageNet or fine-tuned, any class count)',
            num_classes_key='fc.weight',
        ),
        Kind(
            'resnet152',
            'resnet152',
            classifiers.torchvision_resnet,
            'torchvision resnet152 (ImageNet or fine-tuned, any class count)',
            num_classes_key='fc.weight',
        ),
        _torchvision_densenet(121),
        _torchvision_densenet(169),
        Kind(
            'inception_v3',
            'inception_v3',
            classifiers.torchvision_inception_v3,
            'torchvision inception_v3 at 299 px (PPA evaluation model; ImageNet or fine-tuned, '
            'any class count); AuxLogits.* is ignored, or kept with '
            "convert_state_dict(..., model_kwargs={'aux_logits': True})",
            ignore=(
                (
                    r'AuxLogits\..*',
                    'auxiliary classifier (training only); the model has none (aux_logits=False)',
                ),
            ),
            num_classes_key='fc.weight',
        ),
        Kind(
            'fid_inception',
            'fid_inception',
            inception_map.fid_inception,
            "pytorch-fid's FID Inception-v3 (pt_inception-2015-12-05-6726825d.pth), for "
            'config.fid.inception_checkpoint',
            num_classes_key='fc.weight',
            image_size=299,
            make_model=inception_map.make_model,
            classifier=False,
        ),
        Kind(
            'facenet_vggface2',
            'inception_resnet_v1',
            facenet.facenet,
            "facenet-pytorch's InceptionResnetV1 on VGGFace2 (20180402-114759-vggface2.pt), "
            "for config.face_model.checkpoint (PPA's delta_face)",
            ignore=((r'logits\..*', facenet.LOGITS_REASON),),
            num_classes_key='logits.weight',
            image_size=160,
            make_model=facenet.make_model,
            classifier=False,
        ),
        _gan_half(
            'gmi_generator',
            'gmi',
            'generator',
            gans.dcgan_generator,
            'GMI/TL-DMI DCGAN generator (G.tar); pairs with gmi_critic',
        ),
        _gan_half(
            'gmi_critic',
            'gmi',
            'discriminator',
            gans.dgwgan,
            'GMI/TL-DMI WGAN-GP critic DGWGAN (D.tar)',
        ),
        _gan_half(
            'kedmi_generator',
            'kedmi',
            'generator',
            gans.dcgan_generator,
            "KEDMI/LOMMA generator (GMI's DCGAN, G.tar); pairs with kedmi_discriminator",
        ),
        _gan_half(
            'kedmi_discriminator',
            'kedmi',
            'discriminator',
            gans.minibatch_discriminator,
            "KEDMI MinibatchDiscriminator (D.tar); its classes are the target's",
            num_classes_key='fc_layer.weight',
        ),
        _gan_half(
            'plgmi_generator',
            'plgmi',
            'generator',
            gans.resnet_generator,
            'PLG-MI conditional ResNetGenerator (gen_latest.pth.tar); pairs with '
            'plgmi_discriminator',
            num_classes_key='block2.b1.weights.weight',
        ),
        _gan_half(
            'plgmi_discriminator',
            'plgmi',
            'discriminator',
            gans.snresnet_discriminator,
            'PLG-MI spectral-norm ResNet projection discriminator (dis_latest.pth.tar)',
            num_classes_key='l_y.weight_orig',
        ),
    )
}


# Kinds that name a torchvision family: the depth is read from the checkpoint's keys
# (`kind_for_state`). family -> ({blocks of the counted stage: kind}, key pattern whose
# first group is the block index).
FAMILIES: dict[str, tuple[dict[int, str], str]] = {
    'torchvision_resnet': (
        {2: 'resnet18', 23: 'resnet101', 36: 'resnet152'},  # Blocks of layer3.
        r'(?:module\.)?layer3\.(\d+)\.conv1\.weight',
    ),
    'torchvision_densenet': (
        {24: 'densenet121', 32: 'densenet169'},  # Layers of denseblock3.
        r'(?:module\.)?features\.denseblock3\.denselayer(\d+)\.(?:conv1|conv\.1)\.weight',
    ),
}


def kind_for_state(family: str, keys: Iterable[str]) -> str:
    """The kind of `family` (`FAMILIES`) whose depth matches a state dict's keys.

    Raises:
      ConversionError: the keys match no depth of the family (the supported ones listed).
    """
    depths, pattern = FAMILIES[family]
    found = {int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k))}
    count = max(found) + (1 if family == 'torchvision_resnet' else 0) if found else 0
    if count not in depths:
        supported = ', '.join(f'{v} ({n})' for n, v in depths.items())
        raise ConversionError(
            f'--kind={family}: the checkpoint has {count} units in the counted stage, which '
            f'matches none of {supported}; name the kind itself (--kind=...).'
        )
    return depths[count]


def get_kind(kind: str | Kind) -> Kind:
    """Looks a kind up by name (a `Kind` passes through)."""
    if isinstance(kind, Kind):
        return kind
    if kind not in KINDS:
        raise ValueError(f'Unknown kind {kind!r}; known: {", ".join(KINDS)}')
    return KINDS[kind]
