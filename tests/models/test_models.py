"""Tests for the model zoo: sizes, layer groups, forward passes, official freeze points.

Full-size models only go through `jax.eval_shape`; only the tiny variants are run.
"""

import functools
import math
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from tldmi_jax import models
from tldmi_jax.defenses import transfer
from tldmi_jax.models import irse, resnet, small, vgg

FULL_ARCHS = (
    'vgg16',
    'ir152',
    'facenet64',
    'facenet',
    'ir50',
    'resnet18',
    'resnet101',
    'resnet152',
    'densenet121',
    'densenet169',
    'inception_v3',
    'small',
    'efficientnet_b0',
    'efficientnet_b1',
    'efficientnet_b2',
)
TINY_ARCHS = tuple(a for a in models.ARCHS if a.endswith('_tiny'))
NUM_CLASSES = 5
SHAPE_CLASSES = 1000  # Of the shape-only tests: torchvision's sizes.


def _abstract_variables(model: nn.Module, size: int, channels: int = 3) -> dict:
    """Variable shapes of `model.init` on a [1, size, size, channels] input."""
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


@functools.cache
def _registered(
    arch: str, num_classes: int, **kwargs
) -> tuple[nn.Module, dict, tuple[jax.ShapeDtypeStruct, ...], tuple[str, ...]]:
    """A registered model, its variable shapes and output shapes (`(features, logits)`) on a
    [1, size, size, 3] input at its image size, and the paths of the modules whose
    `__call__` ran, in order: one trace, shared by the shape-only tests."""
    model = models.get_model(arch, num_classes, **kwargs)
    called = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == '__call__':
            called.append('/'.join(context.module.path))
        return next_fun(*args, **kwargs)

    size = models.default_image_size(arch)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    with nn.intercept_methods(record):
        outputs, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
    return model, variables, outputs, tuple(called)


def _flat(tree: dict) -> dict[str, jax.ShapeDtypeStruct]:
    return traverse_util.flatten_dict(tree, sep='/')


def _group_of(model: nn.Module, path: str) -> list[str]:
    return [name for name, regex in model.layer_groups if re.fullmatch(regex, path)]


def _trainable_count(model: nn.Module, params: dict, frozen: tuple[str, ...]) -> int:
    """Number of params whose group is not in `frozen`."""
    total = 0
    for path, leaf in _flat(params).items():
        (group,) = _group_of(model, path)
        if group not in frozen:
            total += math.prod(leaf.shape)
    return total


def _images(arch: str, batch: int = 2, channels: int = 3, seed: int = 0) -> jax.Array:
    size = models.default_image_size(arch)
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, channels))


# Published sizes (TL-DMI notes, torchvision) at 1000 classes: (total, official trainable).
@pytest.mark.parametrize(
    'arch, num_classes, total, trainable, rel',
    [
        ('vgg16', 1000, 16.78e6, 13.86e6, 5e-3),
        ('ir152', 1000, 62.60e6, 17.83e6, 5e-3),
        ('facenet64', 1000, 35.44e6, 34.39e6, 5e-3),
        ('resnet18', 1000, 11_689_512, 8.9e6, 1e-3),
        ('resnet152', 1000, 60_192_808, None, 1e-3),
        ('resnet152', 530, None, 16.0e6, 5e-3),
    ],
)
def test_param_counts(arch, num_classes, total, trainable, rel):
    model, variables, _, _ = _registered(arch, num_classes)
    if total is not None:
        assert _trainable_count(model, variables['params'], ()) == pytest.approx(total, rel=rel)
    if trainable is not None:
        frozen = model.official_frozen_groups(model.OFFICIAL_FREEZE_LAYERS)
        count = _trainable_count(model, variables['params'], frozen)
        assert count == pytest.approx(trainable, rel=rel)


# torchvision's sizes at 1000 classes (its documented ImageNet weights; the PyTorch
# references of tests/interop/test_convert_highres.py have them too).
@pytest.mark.parametrize(
    'arch, total',
    [
        ('resnet18', 11_689_512),
        ('resnet101', 44_549_160),
        ('resnet152', 60_192_808),
        ('densenet121', 7_978_856),
        ('densenet169', 14_149_480),
        ('inception_v3', 23_834_568),  # With AuxLogits 27,161,264 (test_convert_highres.py).
    ],
)
def test_torchvision_exact_counts(arch, total):
    _, variables, _, _ = _registered(arch, SHAPE_CLASSES)
    assert sum(math.prod(v.shape) for v in jax.tree.leaves(variables['params'])) == total


# TL-DMI at 224 px: the official freeze (`defense=tldmi` alone) trains ResNet's layer4 + fc
# (DaredEVAL's freeze_layers=6) and DenseNet's denseblock4 + norm5 + classifier (our
# analogue, freeze_layers=9); the torch references have the same trainable sizes.
@pytest.mark.parametrize(
    'arch, num_classes, trainable, groups',
    [
        ('resnet18', 1000, 8_393_728 + 513_000, ('layer4', 'head')),
        ('resnet152', 530, 14_964_736 + 1_085_970, ('layer4', 'head')),
        ('densenet121', 1000, 3_185_128, ('denseblock4', 'head')),
        ('densenet169', 1000, 7_581_928, ('denseblock4', 'head')),
    ],
)
def test_tldmi_official_theta_c(arch, num_classes, trainable, groups):
    model, variables, _, _ = _registered(arch, num_classes)
    spec = ml_collections.ConfigDict({'name': 'tldmi'})
    plan = transfer.resolve(model, variables['params'], variables['batch_stats'], spec)
    assert plan.trainable_params == trainable
    assert tuple(row.group for row in plan.table if row.trainable) == groups
    assert all(row.trainable in (0, row.params) for row in plan.table)


@pytest.mark.parametrize('arch', FULL_ARCHS + TINY_ARCHS)
def test_layer_groups_partition_variables(arch):
    model, variables, _, _ = _registered(arch, SHAPE_CLASSES)
    assert set(variables) == {'params', 'batch_stats'}
    names = [name for name, _ in model.layer_groups]
    assert len(set(names)) == len(names)
    assert names[-1] == 'head'
    used = set()
    for collection in ('params', 'batch_stats'):
        for path in _flat(variables[collection]):
            groups = _group_of(model, path)
            assert len(groups) == 1, f'{collection} {path} matches {groups}'
            used.add(groups[0])
    assert used == set(names), f'empty groups: {set(names) - used}'
    for name, group in models.cut_points(model).items():
        assert group in names, (name, group)


@pytest.mark.parametrize('arch', FULL_ARCHS + TINY_ARCHS)
def test_layer_groups_in_forward_order(arch):
    """Leaf modules are called in non-decreasing group order."""
    model, variables, _, called = _registered(arch, SHAPE_CLASSES)
    paths = list(_flat(variables['params'])) + list(_flat(variables['batch_stats']))
    index = {name: i for i, (name, _) in enumerate(model.layer_groups)}
    order = []
    for module_path in called:
        owned = [p for p in paths if p.rsplit('/', 1)[0] == module_path]
        if owned:
            order.append(index[_group_of(model, owned[0])[0]])
    assert order == sorted(order)
    assert sorted(set(order)) == list(range(len(index)))


@pytest.mark.parametrize(
    'arch, size, feat_dim',
    [
        ('vgg16', 64, 2048),
        ('ir152', 64, 512),
        ('facenet64', 64, 512),
        ('facenet', 112, 512),
        ('resnet18', 224, 512),
        ('resnet101', 224, 2048),
        ('resnet152', 224, 2048),
        ('densenet121', 224, 1024),
        ('densenet169', 224, 1664),
        ('inception_v3', 299, 2048),
        ('small', 32, 1024),
        ('efficientnet_b0', 64, 1280),
        ('efficientnet_b1', 64, 1280),
        ('efficientnet_b2', 64, 1408),
    ],
)
def test_full_size_output_shapes(arch, size, feat_dim):
    _, _, (features, logits), _ = _registered(arch, SHAPE_CLASSES)
    assert models.default_image_size(arch) == size
    assert features.shape == (1, feat_dim)
    assert logits.shape == (1, SHAPE_CLASSES)


_TINY_FEAT_DIMS = {
    'vgg16_tiny': 64,
    'ir152_tiny': 16,
    'facenet64_tiny': 16,
    'facenet_tiny': 16,
    'resnet18_tiny': 16,
    'small_tiny': 16 * 4 * 4,
    'efficientnet_b0_tiny': 160,
}


# The forward passes of these tiny models are compared with torch's, outputs and every
# running statistic, in train and eval mode, by tests/interop/test_convert_highres.py
# (compiling them three more times here would cost about 20 s: 94 convs in the Inception).
_FORWARD_TESTED_ELSEWHERE = ('densenet121_tiny', 'inception_v3_tiny')


@pytest.mark.parametrize('arch', [a for a in TINY_ARCHS if a not in _FORWARD_TESTED_ELSEWHERE])
def test_tiny_forward_train_and_eval(arch):
    model = models.get_model(arch, NUM_CLASSES)
    x = _images(arch)
    variables = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def train_apply(variables, x, rng):
        return model.apply(variables, x, train=True, rngs={'dropout': rng}, mutable=['batch_stats'])

    (features, logits), updates = train_apply(variables, x, jax.random.key(1))
    assert features.shape == (2, _TINY_FEAT_DIMS[arch])
    assert logits.shape == (2, NUM_CLASSES)
    assert np.all(np.isfinite(logits))
    # Every BatchNorm updates its running statistics (some means stay ~0 at init, since
    # they follow another BatchNorm, so compare the (mean, var) pair exactly).
    new_stats, old_stats = _flat(updates['batch_stats']), _flat(variables['batch_stats'])
    assert new_stats.keys() == old_stats.keys()
    for path in new_stats:
        if path.endswith('/mean'):
            var = path[: -len('mean')] + 'var'
            changed = not np.array_equal(new_stats[path], old_stats[path]) or not np.array_equal(
                new_stats[var], old_stats[var]
            )
            assert changed, path

    eval_apply = jax.jit(model.apply)
    out1 = eval_apply({**variables, **updates}, x)
    out2 = eval_apply({**variables, **updates}, x)
    chex.assert_trees_all_equal(out1, out2)
    assert out1[0].shape == features.shape
    assert out1[1].shape == logits.shape


@pytest.mark.parametrize('arch', ['small_tiny', 'vgg16_tiny'])
def test_grayscale_input(arch):
    model = models.get_model(arch, NUM_CLASSES)
    x = _images(arch, channels=1)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    features, logits = jax.jit(model.apply)(variables, x)
    assert features.shape == (2, _TINY_FEAT_DIMS[arch])
    assert logits.shape == (2, NUM_CLASSES)


def test_ir_dropout_only_in_training():
    model = models.get_model('ir152_tiny', NUM_CLASSES)
    x = _images('ir152_tiny')
    variables = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def train_features(rng):
        return model.apply(
            variables, x, train=True, rngs={'dropout': rng}, mutable=['batch_stats']
        )[0][0]

    assert not np.allclose(train_features(jax.random.key(1)), train_features(jax.random.key(2)))


@pytest.mark.parametrize('size', [8, 7])
def test_ir_identity_shortcut_is_subsampling(size):
    """With a zeroed residual, a same-width stride-2 unit is torch's MaxPool2d(1, 2)."""
    unit = irse.BottleneckIR(depth=4, stride=2)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 4))
    variables = unit.init(jax.random.key(1), x, False)
    params = dict(variables['params'])
    params['bn2'] = {'scale': jnp.zeros(4), 'bias': jnp.zeros(4)}
    y = unit.apply({**variables, 'params': params}, x, False)
    expected_size = -(-size // 2)
    assert y.shape == (2, expected_size, expected_size, 4)
    np.testing.assert_array_equal(y, x[:, ::2, ::2, :])
    assert 'shortcut_conv' not in variables['params']


def test_ir_projection_shortcut_when_width_changes():
    unit = irse.BottleneckIR(depth=8, stride=2)
    x = jnp.ones((1, 7, 7, 4))
    variables = jax.eval_shape(functools.partial(unit.init, train=False), jax.random.key(0), x)
    assert {'shortcut_conv', 'shortcut_bn'} <= set(variables['params'])
    y = jax.eval_shape(functools.partial(unit.apply, train=False), variables, x)
    assert y.shape == (1, 4, 4, 8)


def test_vgg_official_freezing():
    model = vgg.VGG16(num_classes=10)
    convs = tuple(name for name, _ in model.layer_groups[:-1])
    assert len(convs) == 13
    assert model.official_frozen_groups(0) == convs
    assert model.official_frozen_groups(26) == convs[:8]
    assert model.official_frozen_groups(26)[-1] == 'conv4_1'
    assert model.official_frozen_groups(25) == convs[:8]
    assert model.official_frozen_groups(23) == convs[:7]
    assert model.official_frozen_groups(43) == convs
    assert model.official_frozen_groups(26, freeze_stem=True) == convs[:8]
    with pytest.raises(ValueError, match='conv4_1 but not its BatchNorm'):
        model.official_frozen_groups(24)
    with pytest.raises(ValueError):
        model.official_frozen_groups(-1)
    assert vgg.VGG16.OFFICIAL_FREEZE_LAYERS == 26
    assert model.cut_points['stage4'] == 'conv4_1'


def test_ir_official_freezing():
    model = irse.IR152(num_classes=10)
    assert model.official_frozen_groups(0) == ()
    assert model.official_frozen_groups(0, freeze_stem=True) == ()
    frozen = model.official_frozen_groups(46)
    assert frozen == tuple(f'body_{i}' for i in range(47))
    assert model.official_frozen_groups(46, freeze_stem=True) == ('stem', *frozen)
    assert model.cut_points == {
        'stage1': 'body_0',
        'stage2': 'body_3',
        'stage3': 'body_11',
        'stage4': 'body_47',
        'head': 'head',
    }
    assert irse.IR152.OFFICIAL_FREEZE_LAYERS == 46
    assert irse.FaceNet64.OFFICIAL_FREEZE_LAYERS == 5
    assert irse.FaceNet.OFFICIAL_FREEZE_LAYERS is None
    assert irse.FaceNet64(num_classes=10).cut_points['stage4'] == 'body_21'
    # The stem typo of the original code: its 1,920 parameters stay trainable.
    params = _abstract_variables(model, 64)['params']
    stem_params = _trainable_count(model, params, ()) - _trainable_count(model, params, ('stem',))
    assert stem_params == 1920


def test_resnet_official_freezing():
    model = resnet.ResNet18(num_classes=10)
    assert model.official_frozen_groups(6) == ('stem', 'layer1', 'layer2', 'layer3')
    assert model.official_frozen_groups(7) == ('stem', 'layer1', 'layer2', 'layer3', 'layer4')
    assert model.official_frozen_groups(0) == ('stem', 'layer1', 'layer2', 'layer3', 'layer4')
    assert model.official_frozen_groups(1) == ('stem',)
    assert model.official_frozen_groups(4) == ('stem', 'layer1')


def test_small_official_freezing():
    model = small.SmallCNN(num_classes=10)
    assert model.official_frozen_groups(0) == ()
    assert model.official_frozen_groups(2) == ('block0', 'block1')
    with pytest.raises(ValueError):
        model.official_frozen_groups(5)
    assert model.OFFICIAL_FREEZE_LAYERS is None


def test_small_feat_dim_projection():
    model = small.SmallCNN(num_classes=3, widths=(8, 16), feat_dim=12)
    variables = _abstract_variables(model, 16)
    assert _group_of(model, 'feat/kernel') == ['head']
    x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
    features, logits = jax.eval_shape(model.apply, _abstract_variables(model, 16, 1), x)
    assert features.shape == (2, 12)
    assert logits.shape == (2, 3)
    assert 'feat' in variables['params']


def test_registry():
    assert set(FULL_ARCHS) | set(TINY_ARCHS) == set(models.ARCHS)
    assert isinstance(models.get_model('ir152', 7), irse.IR152)
    assert models.get_model('vgg16', 7).num_classes == 7
    with pytest.raises(ValueError, match='vgg16'):
        models.get_model('vgg19', 7)
    with pytest.raises(ValueError, match='Unknown arch'):
        models.default_image_size('nope')
    for arch in TINY_ARCHS:  # The Inception-v3 trunk needs at least 75 px.
        expected = (75,) if arch.startswith('inception') else (16, 32)
        assert models.default_image_size(arch) in expected


# The 1-based cut-point vocabulary: the layer group where `stageK` starts, per architecture
# family (`_tiny` variants use the same names).
def _ir_starts(units):
    starts = [0]
    for n in units[:-1]:
        starts.append(starts[-1] + n)
    return [f'body_{i}' for i in starts]


_STAGE_GROUPS = {
    'vgg16': [f'conv{b}_1' for b in range(1, 6)],
    'vgg16_tiny': [f'conv{b}_1' for b in range(1, 6)],
    'small': ['block0', 'block1', 'block2', 'block3'],
    'small_tiny': ['block0', 'block1'],
    'ir152': _ir_starts((3, 8, 36, 3)),
    'facenet64': _ir_starts((3, 4, 14, 3)),
    'ir50': _ir_starts((3, 4, 14, 3)),
    'facenet': _ir_starts((3, 4, 14, 3)),
    'ir152_tiny': _ir_starts((1, 1, 1, 1)),
    'facenet64_tiny': _ir_starts((1, 1, 1, 1)),
    'facenet_tiny': _ir_starts((1, 1, 1, 1)),
    'resnet18': ['layer1', 'layer2', 'layer3', 'layer4'],
    'resnet101': ['layer1', 'layer2', 'layer3', 'layer4'],
    'resnet152': ['layer1', 'layer2', 'layer3', 'layer4'],
    'resnet18_tiny': ['layer1', 'layer2', 'layer3', 'layer4'],
    'densenet121': [f'denseblock{i}' for i in range(1, 5)],
    'densenet169': [f'denseblock{i}' for i in range(1, 5)],
    'densenet121_tiny': [f'denseblock{i}' for i in range(1, 5)],
    'inception_v3': ['Mixed_5b', 'Mixed_6a', 'Mixed_7a'],
    'inception_v3_tiny': ['Mixed_5b', 'Mixed_6a', 'Mixed_7a'],
    'efficientnet_b0': [f'stage{s}' for s in range(1, 8)],
    'efficientnet_b1': [f'stage{s}' for s in range(1, 8)],
    'efficientnet_b2': [f'stage{s}' for s in range(1, 8)],
    'efficientnet_b0_tiny': [f'stage{s}' for s in range(1, 8)],
}


def _old_cut_points(arch: str) -> dict[str, str]:
    """The cut-point names before the vocabulary and the group each one named then."""
    family = arch.removesuffix('_tiny')
    if family == 'vgg16':  # 1-based blocks.
        return {f'block{b}': f'conv{b}_1' for b in range(1, 6)}
    if family == 'small':  # 0-based blocks: `block2` froze two of them.
        return {f'block{i}': f'block{i}' for i in range(len(_STAGE_GROUPS[arch]))}
    if family.startswith('resnet'):
        return {f'layer{s}': f'layer{s}' for s in range(1, 5)}
    if family.startswith('efficientnet'):
        old = {f'features_{s}': f'stage{s}' for s in range(1, 8)}
        return {'features_0': 'stem', **old, 'features_8': 'head_conv'}
    return {f'stage{s}': g for s, g in enumerate(_STAGE_GROUPS[arch], start=1)}  # IR: as today.


def test_vocabulary_table_covers_the_registry():
    assert set(_STAGE_GROUPS) == set(models.ARCHS)


@pytest.mark.parametrize('arch', sorted(models.ARCHS))
def test_cut_point_vocabulary(arch):
    model = models.get_model(arch, NUM_CLASSES)
    stages = _STAGE_GROUPS[arch]
    expected = {f'stage{k}': g for k, g in enumerate(stages, start=1)}
    assert model.cut_points == {**expected, 'head': 'head'}
    assert list(model.cut_points) == [*expected, 'head']  # In forward order.
    points = models.cut_points(model)
    for name, _ in model.layer_groups:  # Every group is a (fine-grained) cut point.
        assert points[name] == name
    for name, group in expected.items():
        assert models.cut_point_group(model, name) == group


@pytest.mark.parametrize('arch', sorted(models.ARCHS))
def test_old_cut_point_names_keep_their_meaning(arch):
    model = models.get_model(arch, NUM_CLASSES)
    for old, group in _old_cut_points(arch).items():
        assert models.cut_point_group(model, old) == group, old
    assert models.cut_point_group(model, 'head') == 'head'


def test_small_and_vgg_block2_differ_as_before():
    small_model = models.get_model('small', NUM_CLASSES)
    vgg_model = models.get_model('vgg16', NUM_CLASSES)
    assert models.cut_point_group(small_model, 'block2') == 'block2'  # = stage3
    assert models.cut_point_group(small_model, 'stage3') == 'block2'
    assert models.cut_point_group(vgg_model, 'block2') == 'conv2_1'  # = stage2
    assert models.cut_point_group(vgg_model, 'stage2') == 'conv2_1'
    assert small.SmallCNN(num_classes=3).cut_point_aliases['block2'] == 'stage3'


def test_old_name_logs_one_deprecation_line(caplog):
    model = models.get_model('small_tiny', NUM_CLASSES)
    with caplog.at_level('WARNING'):
        assert models.cut_point_group(model, 'stage2') == 'block1'
        assert models.cut_point_group(model, 'block1') == 'block1'
    lines = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(lines) == 1 and "'block1'" in lines[0] and "'stage2'" in lines[0]


def test_unknown_cut_point_lists_the_vocabulary():
    model = models.get_model('resnet18_tiny', NUM_CLASSES)
    with pytest.raises(ValueError, match=r"Unknown cut point 'stage5'.*'stage4', 'head'"):
        models.cut_point_group(model, 'stage5')
    with pytest.raises(ValueError, match=r"old name \['layer1'"):
        models.cut_point_group(model, 'block1')
