"""DenseNet-121/169: torchvision names, groups, the TL-DMI freeze translation.

Sizes, output shapes and group partitions run with every model in `test_models.py`; the
tiny forward pass (concatenation order included) is compared with torchvision's layout in
`tests/interop/test_convert_highres.py`.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from tldmi_jax import models
from tldmi_jax.models import densenet

GROUPS = (
    'stem',
    'denseblock1',
    'transition1',
    'denseblock2',
    'transition2',
    'denseblock3',
    'transition3',
    'denseblock4',
    'head',
)


def _params(arch: str, num_classes: int = 3) -> dict:
    model = models.get_model(arch, num_classes)
    size = models.default_image_size(arch)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)['params']


def test_tiny_has_the_parameter_names_of_torchvision():
    names = set(traverse_util.flatten_dict(_params('densenet121_tiny'), sep='/'))
    assert {
        'conv0/kernel',
        'norm0/scale',
        'denseblock1/denselayer2/norm1/bias',
        'denseblock4/denselayer2/conv2/kernel',
        'transition3/norm/scale',
        'transition3/conv/kernel',
        'norm5/scale',
        'classifier/kernel',
    } <= names
    assert not any(n.startswith('transition4') for n in names)  # None after the last block.
    assert not any(re.fullmatch(r'.*conv\d?/bias', n) for n in names)  # Convs have no bias.


@pytest.mark.parametrize('arch', ['densenet121', 'densenet169', 'densenet121_tiny'])
def test_groups_and_cut_points(arch):
    model = models.get_model(arch, 3)
    assert tuple(name for name, _ in model.layer_groups) == GROUPS
    assert model.cut_points == {
        'stage1': 'denseblock1',
        'stage2': 'denseblock2',
        'stage3': 'denseblock3',
        'stage4': 'denseblock4',
        'head': 'head',
    }
    assert models.cut_point_group(model, 'transition2') == 'transition2'
    groups = dict(model.layer_groups)
    assert re.fullmatch(groups['denseblock4'], 'norm5/scale')
    assert not re.fullmatch(groups['denseblock4'], 'denseblock3/denselayer1/conv1/kernel')


def test_official_freezing():
    model = densenet.DenseNet121(num_classes=10)
    body = GROUPS[:-1]
    assert densenet.DenseNet.OFFICIAL_FREEZE_LAYERS == 9
    assert model.official_frozen_groups(9) == body[:-1]  # trains denseblock4 + norm5 + fc
    assert model.official_frozen_groups(0) == body  # linear probe, as the ResNet rule
    assert model.official_frozen_groups(11) == body
    assert model.official_frozen_groups(50) == body
    for k in (1, 2, 3):
        assert model.official_frozen_groups(k) == ('stem',)
    assert model.official_frozen_groups(4) == ('stem', 'denseblock1')
    assert model.official_frozen_groups(5) == ('stem', 'denseblock1', 'transition1')
    assert model.official_frozen_groups(8) == body[:6]
    with pytest.raises(ValueError, match='denseblock4 but not norm5'):
        model.official_frozen_groups(10)
    with pytest.raises(ValueError, match='>= 0'):
        model.official_frozen_groups(-1)
