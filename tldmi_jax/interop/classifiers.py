"""Key mappings of the classifier checkpoints (VGG16-BN, face.evoLVe IR, torchvision ResNet).

Each function takes the target model (an unbound `tldmi_jax.models` module, so the unit
counts and widths come from it and tiny variants map the same way) and returns the
`mapping.Rule`s that fill its variables. Source key layouts:

- torchvision `vgg16_bn.features`: child `i` of a `Sequential` of 13 x (Conv, BN, ReLU)
  with a MaxPool after each block; convs at 0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40.
- face.evoLVe IR backbone: `input_layer.{0: Conv, 1: BN, 2: PReLU}`; `body.{i}` units with
  `res_layer.{0: BN, 1: Conv3x3, 2: PReLU, 3: Conv3x3 (stride), 4: BN}` and, where the
  width changes, `shortcut_layer.{0: Conv1x1, 1: BN}`; `output_layer.{0: BN2d,
  1: Dropout, 2: Flatten, 3: Linear, 4: BN1d}`.
- torchvision ResNet: `conv1`, `bn1`, `layer{L}.{b}.{conv,bn}{1,2[,3]}`,
  `layer{L}.{b}.downsample.{0: Conv1x1, 1: BN}`, `fc`.
- torchvision DenseNet: `features.{conv0,norm0}`,
  `features.denseblock{i}.denselayer{j}.{norm1,conv1,norm2,conv2}` (i, j from 1),
  `features.transition{i}.{norm,conv}` (after blocks 1-3), `features.norm5`, `classifier`.
  Checkpoints from before torchvision 0.3 spell `norm1` as `norm.1` (and so on); the kinds
  rewrite those keys with `aliases`.
- torchvision Inception-v3: `{block}.conv`, `{block}.bn` for every `BasicConv2d` (stem
  `Conv2d_*`, `Mixed_*.branch*`; see `tldmi_jax.interop.inception`), `fc`, and the
  auxiliary classifier `AuxLogits.{conv0,conv1}.{conv,bn}`, `AuxLogits.fc`.
"""

import flax.linen as nn

from tldmi_jax.interop import inception
from tldmi_jax.interop.mapping import Rule, batch_norm, conv, linear, prelu


def vgg_features(model: nn.Module, src: str) -> list[Rule]:
    """torchvision `vgg*_bn.features` children under `src` -> `conv{b}_{i}/{conv,bn}`."""
    rules, index = [], 0
    for b, depth in enumerate(model.depths):
        for i in range(depth):
            dst = f'conv{b + 1}_{i + 1}'
            rules += conv(f'{src}.{index}', f'{dst}/conv')
            rules += batch_norm(f'{src}.{index + 1}', f'{dst}/bn')
            index += 3  # conv, bn, relu
        index += 1  # max-pool
    return rules


def tldmi_vgg16(model: nn.Module) -> list[Rule]:
    """TL-DMI/KEDMI `VGG16`: `feature.*`, `bn` (BN1d, bias frozen at 0), `fc_layer`."""
    return [
        *vgg_features(model, 'feature'),
        # `bn.bias` is checked (must be ~0) and listed as ignored: our head_bn has no bias.
        *batch_norm('bn', 'head_bn', bias=False),
        *linear('fc_layer', 'fc'),
    ]


def torchvision_vgg16_bn(model: nn.Module) -> list[Rule]:
    """torchvision `vgg16_bn`: `features.*` only (the ImageNet `classifier` is dropped)."""
    return vgg_features(model, 'features')


def ir_backbone(model: nn.Module, src: str) -> list[Rule]:
    """face.evoLVe `input_layer` and `body` under `src` ('' for a bare backbone)."""
    pre = f'{src}.' if src else ''
    rules = [
        *conv(f'{pre}input_layer.0', 'input_layer/conv', bias=False),
        *batch_norm(f'{pre}input_layer.1', 'input_layer/bn'),
        *prelu(f'{pre}input_layer.2', 'input_layer/prelu'),
    ]
    in_width, index = model.stem_width, 0
    for units, width in zip(model.stage_units, model.widths, strict=True):
        for _ in range(units):
            s, d = f'{pre}body.{index}', f'body_{index}'
            rules += batch_norm(f'{s}.res_layer.0', f'{d}/bn1')
            rules += conv(f'{s}.res_layer.1', f'{d}/conv1', bias=False)
            rules += prelu(f'{s}.res_layer.2', f'{d}/prelu')
            rules += conv(f'{s}.res_layer.3', f'{d}/conv2', bias=False)
            rules += batch_norm(f'{s}.res_layer.4', f'{d}/bn2')
            if in_width != width:  # else the shortcut is a parameter-free MaxPool2d(1, s)
                rules += conv(f'{s}.shortcut_layer.0', f'{d}/shortcut_conv', bias=False)
                rules += batch_norm(f'{s}.shortcut_layer.1', f'{d}/shortcut_bn')
            in_width, index = width, index + 1
    return rules


def ir_output_layer(src: str) -> list[Rule]:
    """`Sequential(BN2d, Dropout, Flatten, Linear, BN1d)` at `src` -> `output_layer/*`."""
    return [
        *batch_norm(f'{src}.0', 'output_layer/bn2d'),
        *linear(f'{src}.3', 'output_layer/fc'),
        *batch_norm(f'{src}.4', 'output_layer/bn1d'),
    ]


def tldmi_ir64(model: nn.Module) -> list[Rule]:
    """TL-DMI/KEDMI `IR152` / `FaceNet64`: `feature.{input_layer,body}`, `output_layer`,
    `fc_layer`."""
    return [
        *ir_backbone(model, 'feature'),
        *ir_output_layer('output_layer'),
        *linear('fc_layer', 'fc'),
    ]


def tldmi_facenet112(model: nn.Module) -> list[Rule]:
    """GMI/KEDMI/TL-DMI evaluation `FaceNet` (IR-50 at 112 px): the backbone keeps its own
    `feature.output_layer`; then `fc_layer`."""
    return [
        *ir_backbone(model, 'feature'),
        *ir_output_layer('feature.output_layer'),
        *linear('fc_layer', 'fc'),
    ]


def evolve_backbone(model: nn.Module) -> list[Rule]:
    """face.evoLVe MS-Celeb-1M `Backbone`: `input_layer`, `body` (its 112-px `output_layer`
    is ignored by the kind)."""
    return ir_backbone(model, '')


def evolve_embedding(model: nn.Module) -> list[Rule]:
    """face.evoLVe MS-Celeb-1M `Backbone` whole: `input_layer`, `body` and its 112-px
    embedding head `output_layer` (onto a 112-px model, whose head has the same shapes)."""
    return [*ir_backbone(model, ''), *ir_output_layer('output_layer')]


def torchvision_resnet(model: nn.Module) -> list[Rule]:
    """torchvision `resnet*`: stem, `layer1..4` blocks and `fc`."""
    rules = [*conv('conv1', 'conv1', bias=False), *batch_norm('bn1', 'bn1')]
    expansion, convs = (4, 3) if model.bottleneck else (1, 2)
    in_width = model.stem_width
    for s, (blocks, width) in enumerate(zip(model.stage_blocks, model.widths, strict=True)):
        for b in range(blocks):
            src, dst = f'layer{s + 1}.{b}', f'layer{s + 1}_{b}'
            for c in range(1, convs + 1):
                rules += conv(f'{src}.conv{c}', f'{dst}/conv{c}', bias=False)
                rules += batch_norm(f'{src}.bn{c}', f'{dst}/bn{c}')
            stride = 2 if (b == 0 and s > 0) else 1
            if stride != 1 or in_width != width * expansion:
                rules += conv(f'{src}.downsample.0', f'{dst}/downsample_conv', bias=False)
                rules += batch_norm(f'{src}.downsample.1', f'{dst}/downsample_bn')
            in_width = width * expansion
    return [*rules, *linear('fc', 'fc')]


def torchvision_densenet(model: nn.Module) -> list[Rule]:
    """torchvision `densenet*`: stem, dense blocks, transitions, `norm5` and `classifier`."""
    rules = [*conv('features.conv0', 'conv0', bias=False), *batch_norm('features.norm0', 'norm0')]
    for i, layers in enumerate(model.block_layers, start=1):
        for j in range(1, layers + 1):
            src, dst = f'features.denseblock{i}.denselayer{j}', f'denseblock{i}/denselayer{j}'
            for k in (1, 2):
                rules += batch_norm(f'{src}.norm{k}', f'{dst}/norm{k}')
                rules += conv(f'{src}.conv{k}', f'{dst}/conv{k}', bias=False)
        if i < len(model.block_layers):
            src, dst = f'features.transition{i}', f'transition{i}'
            rules += batch_norm(f'{src}.norm', f'{dst}/norm')
            rules += conv(f'{src}.conv', f'{dst}/conv', bias=False)
    return [*rules, *batch_norm('features.norm5', 'norm5'), *linear('classifier', 'classifier')]


def torchvision_inception_v3(model: nn.Module) -> list[Rule]:
    """torchvision `inception_v3`: the trunk, `fc`, and `AuxLogits` if the model has it."""
    rules = [*inception.trunk(), *linear('fc', 'fc')]
    if model.aux_logits:
        for name in ('conv0', 'conv1'):
            rules += inception.basic_conv(f'AuxLogits.{name}', f'AuxLogits/{name}')
        rules += linear('AuxLogits.fc', 'AuxLogits/fc')
    return rules
