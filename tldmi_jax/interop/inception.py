"""Key mapping of pytorch-fid's FID Inception (`pt_inception-2015-12-05-6726825d.pth`).

pytorch-fid's `fid_inception_v3()` is torchvision's `Inception3(num_classes=1008,
aux_logits=False)` with the `FIDInceptionA/C/E_1/E_2` blocks; its state dict names every
`BasicConv2d` as `{block}.{branch}.conv` / `.bn` and the classifier `fc`. The target is
`tldmi_jax.models.inception.FIDInceptionV3`, whose parameter paths are those module paths
('.' -> '/', see `torch_name_to_flax` there). Convolutions have no bias; BatchNorm eps is
1e-3 on both sides. torchvision's `inception_v3` names its trunk the same way (`trunk()`;
its classifier kind is `tldmi_jax.interop.classifiers.torchvision_inception_v3`).

The converted directory is the orbax model checkpoint that
`tldmi_jax.evaluation.evaluate.load_inception` reads from `config.fid.inception_checkpoint`:

  python launch/convert.py --kind=fid_inception \
    --src=pt_inception-2015-12-05-6726825d.pth --dst=converted/fid_inception
"""

import flax.linen as nn

from tldmi_jax.interop.mapping import Rule, batch_norm, conv, linear
from tldmi_jax.models import inception

_A = (
    'branch1x1',
    'branch5x5_1',
    'branch5x5_2',
    'branch3x3dbl_1',
    'branch3x3dbl_2',
    'branch3x3dbl_3',
    'branch_pool',
)
_B = ('branch3x3', 'branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3')
_C = (
    'branch1x1',
    *(f'branch7x7_{i}' for i in (1, 2, 3)),
    *(f'branch7x7dbl_{i}' for i in (1, 2, 3, 4, 5)),
    'branch_pool',
)
_D = ('branch3x3_1', 'branch3x3_2', *(f'branch7x7x3_{i}' for i in (1, 2, 3, 4)))
_E = (
    'branch1x1',
    'branch3x3_1',
    'branch3x3_2a',
    'branch3x3_2b',
    'branch3x3dbl_1',
    'branch3x3dbl_2',
    'branch3x3dbl_3a',
    'branch3x3dbl_3b',
    'branch_pool',
)
# Mixed block -> its BasicConv2d branches (torchvision/pytorch-fid attribute names).
MIXED = {
    **dict.fromkeys(('Mixed_5b', 'Mixed_5c', 'Mixed_5d'), _A),
    'Mixed_6a': _B,
    **dict.fromkeys(('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'), _C),
    'Mixed_7a': _D,
    **dict.fromkeys(('Mixed_7b', 'Mixed_7c'), _E),
}


def basic_conv(src: str, dst: str) -> list[Rule]:
    """torchvision `BasicConv2d` (conv without bias, bn) -> `inception.BasicConv`."""
    return [*conv(f'{src}.conv', f'{dst}/conv', bias=False), *batch_norm(f'{src}.bn', f'{dst}/bn')]


def trunk() -> list[Rule]:
    """The stem convs and Mixed blocks, named alike in pytorch-fid and torchvision."""
    rules = []
    for name in inception.STEM:
        rules += basic_conv(name, name)
    for block, branches in MIXED.items():
        for branch in branches:
            rules += basic_conv(f'{block}.{branch}', f'{block}/{branch}')
    return rules


def fid_inception(model: nn.Module) -> list[Rule]:
    """pytorch-fid `fid_inception_v3()` -> `FIDInceptionV3` (any `width_mult`)."""
    del model  # Same names at every width.
    return [*trunk(), *linear('fc', 'fc')]


def make_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """`Kind.make_model`: an `inception.INCEPTIONS` network with the checkpoint's classes."""
    if arch not in inception.INCEPTIONS:
        known = ', '.join(sorted(inception.INCEPTIONS))
        raise ValueError(f'Unknown Inception {arch!r}; known: {known}')
    return inception.INCEPTIONS[arch](num_classes=num_classes, **kwargs)
