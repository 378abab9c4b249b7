"""Key mapping of facenet-pytorch's InceptionResnetV1 (`20180402-114759-vggface2.pt`).

The file is a plain state dict of `InceptionResnetV1(pretrained='vggface2')`: every
`BasicConv2d` as `{module}.conv.weight` (no bias) and `{module}.bn.*`, the blocks' residual
`{block}.conv2d.weight/bias`, `last_linear.weight` (no bias), `last_bn.*`, and `logits.*`,
the classifier over the 8631 VGGFace2 training identities. The target is
`tldmi_jax.models.inception_resnet_v1.InceptionResnetV1`, whose parameter paths are the
torch module paths (`torch_path_to_flax`: '.' -> '/', `Sequential` indices joined by '_').
BatchNorm eps is 1e-3 on both sides.

The converted directory is the model checkpoint that `config.face_model.checkpoint` of
`configs/evaluate_ppa.py` reads (PPA's delta_face):

  python launch/convert.py --kind=facenet_vggface2 \
    --src=20180402-114759-vggface2.pt --dst=converted/facenet_vggface2
"""

import flax.linen as nn

from tldmi_jax.interop.mapping import Rule, batch_norm, conv, linear
from tldmi_jax.models import inception_resnet_v1 as irv1

# Why `logits.*` is not converted (`Kind.ignore`).
LOGITS_REASON = (
    'classifier over the 8631 VGGFace2 training identities; delta_face uses the 512-d '
    'embedding before it (facenet-pytorch classify=False)'
)
# The BasicConv2d modules of each block, as torch sub-paths.
_BRANCHES = {
    'Block35': ('branch0', 'branch1.0', 'branch1.1', 'branch2.0', 'branch2.1', 'branch2.2'),
    'Block17': ('branch0', 'branch1.0', 'branch1.1', 'branch1.2'),
    'Block8': ('branch0', 'branch1.0', 'branch1.1', 'branch1.2'),
    'Mixed_6a': ('branch0', 'branch1.0', 'branch1.1', 'branch1.2'),
    'Mixed_7a': (
        *('branch0.0', 'branch0.1', 'branch1.0', 'branch1.1'),
        *('branch2.0', 'branch2.1', 'branch2.2'),
    ),
}


def _basic_conv(src: str) -> list[Rule]:
    """`BasicConv2d` at torch path `src` (conv without bias, bn)."""
    dst = irv1.torch_path_to_flax(src)
    return [*conv(f'{src}.conv', f'{dst}/conv', bias=False), *batch_norm(f'{src}.bn', f'{dst}/bn')]


def _block(src: str, kind: str) -> list[Rule]:
    """A residual block: its BasicConv2d branches and the 1x1 `conv2d` with bias."""
    rules = [r for branch in _BRANCHES[kind] for r in _basic_conv(f'{src}.{branch}')]
    return [*rules, *conv(f'{src}.conv2d', f'{irv1.torch_path_to_flax(src)}/conv2d')]


def facenet(model: nn.Module) -> list[Rule]:
    """facenet-pytorch `InceptionResnetV1` -> `InceptionResnetV1` (any width and repeats)."""
    rules = [r for name, *_ in irv1.STEM for r in _basic_conv(name)]
    blocks = ('Block35', 'Block17', 'Block8')
    for stage, (block, n) in enumerate(zip(blocks, model.repeats, strict=True)):
        rules += [r for i in range(n) for r in _block(f'repeat_{stage + 1}.{i}', block)]
        if stage < 2:  # The reductions after repeat_1 and repeat_2.
            mixed, kind = (('mixed_6a', 'Mixed_6a'), ('mixed_7a', 'Mixed_7a'))[stage]
            rules += [r for b in _BRANCHES[kind] for r in _basic_conv(f'{mixed}.{b}')]
    rules += _block('block8', 'Block8')
    return [
        *rules,
        *linear('last_linear', 'last_linear', bias=False),
        *batch_norm('last_bn', 'last_bn'),
    ]


def make_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """`Kind.make_model`: an embedding model (`FACE_MODELS`); `num_classes` does not apply."""
    del num_classes  # The checkpoint's `logits` layer is not converted.
    if arch not in irv1.FACE_MODELS:
        known = ', '.join(sorted(irv1.FACE_MODELS))
        raise ValueError(f'Unknown face model {arch!r}; known: {known}')
    return irv1.FACE_MODELS[arch](**kwargs)
