"""Inception-v3: the FID network (parameter count, pytorch-fid naming, tiny forward pass)
and torchvision's classifier (pool branches, groups, freezing, auxiliary head).

The classifier's sizes and shapes run with every model in `test_models.py`; its parity
with torchvision's layout is in `tests/interop/test_convert_highres.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tldmi_jax import models
from tldmi_jax.models import inception, inception_v3

# torchvision's documented inception_v3 size (ImageNet weights meta: 27,161,264), minus
# its auxiliary head (InceptionAux(768, 1000): 1x1 conv 768->128 + BN, 5x5 conv 128->768 +
# BN, Linear 768->1000), with the 1008-way classifier of pytorch-fid's fid_inception_v3().
AUX = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
PYTORCH_FID_PARAMS = 27_161_264 - AUX - (2048 * 1000 + 1000) + (2048 * 1008 + 1008)

# pytorch-fid state-dict keys and their torch shapes.
TORCH_KEYS = {
    'Conv2d_1a_3x3.conv.weight': (32, 3, 3, 3),
    'Conv2d_4a_3x3.bn.running_var': (192,),
    'Mixed_5b.branch5x5_2.conv.weight': (64, 48, 5, 5),
    'Mixed_5b.branch_pool.conv.weight': (32, 192, 1, 1),
    'Mixed_6a.branch3x3.conv.weight': (384, 288, 3, 3),
    'Mixed_6b.branch7x7_2.conv.weight': (128, 128, 1, 7),
    'Mixed_6e.branch7x7dbl_5.bn.weight': (192,),
    'Mixed_7a.branch7x7x3_4.conv.weight': (192, 192, 3, 3),
    'Mixed_7b.branch3x3_2a.conv.weight': (384, 384, 1, 3),
    'Mixed_7c.branch3x3dbl_3b.conv.weight': (384, 384, 3, 1),
    'Mixed_7c.branch_pool.bn.running_mean': (192,),
    'fc.weight': (1008, 2048),
    'fc.bias': (1008,),
}


@pytest.fixture(scope='module')
def shapes():
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    model = inception.FIDInceptionV3()
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    return variables, out


def test_param_count_and_output_shapes(shapes):
    variables, (feats, logits) = shapes
    assert PYTORCH_FID_PARAMS == 23_850_960
    assert inception.count_params() == PYTORCH_FID_PARAMS
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    flat = traverse_util.flatten_dict(variables['params'], sep='/')
    assert sum(v.size for k, v in flat.items() if not k.startswith('fc/')) == 21_785_568


def test_pytorch_fid_names_map_one_to_one(shapes):
    variables, _ = shapes
    for key, torch_shape in TORCH_KEYS.items():
        collection, path = inception.torch_name_to_flax(key)
        leaf = variables[collection]
        for part in path:
            leaf = leaf[part]
        expected = torch_shape
        if len(torch_shape) == 4:  # OIHW -> HWIO
            expected = tuple(torch_shape[i] for i in (2, 3, 1, 0))
        elif len(torch_shape) == 2:  # [out, in] -> [in, out]
            expected = torch_shape[::-1]
        assert leaf.shape == expected, key
    assert inception.torch_name_to_flax('Mixed_5b.branch1x1.bn.num_batches_tracked') is None
    with pytest.raises(ValueError, match='AuxLogits'):
        inception.torch_name_to_flax('AuxLogits.fc.weight')
    groups = [name for name, _ in inception.FIDInceptionV3().layer_groups]
    assert groups[0] == 'Conv2d_1a_3x3' and groups[-2:] == ['Mixed_7c', 'head']


def test_tiny_variant_runs_with_the_same_names(shapes):
    variables, _ = shapes
    tiny = inception.get_inception('fid_inception_tiny')
    tiny_vars = inception.random_variables(tiny, seed=0)
    names = set(traverse_util.flatten_dict(variables['params'], sep='/'))
    assert set(traverse_util.flatten_dict(tiny_vars['params'], sep='/')) == names
    x = np.random.default_rng(0).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    feats, logits = jax.jit(tiny.apply)(tiny_vars, x)
    assert feats.shape == (2, 128) and logits.shape == (2, 16)
    assert np.all(np.isfinite(feats)) and np.std(np.asarray(feats)) > 0
    with pytest.raises(ValueError, match='Unknown Inception'):
        inception.get_inception('inception_v4')


def test_average_pool_excludes_padding():
    # TF (and FIDInceptionA/C/E_1) average only over real pixels: a constant stays constant.
    out = inception._avg_pool_same(jnp.ones((1, 4, 4, 2)))
    np.testing.assert_allclose(np.asarray(out), 1.0)


def test_torchvision_average_pool_counts_the_padding():
    # torchvision's avg_pool2d(3, 1, 1) divides by 9 everywhere: a corner sees 4 real pixels.
    out = np.asarray(inception._pool_same(jnp.ones((1, 4, 4, 2)), 'avg_pad'))
    np.testing.assert_allclose(out[0, 0, 0], 4.0 / 9.0, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 1], 6.0 / 9.0, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 1], 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match='pool must be one of'):
        inception._pool_same(jnp.ones((1, 4, 4, 2)), 'mean')


@pytest.mark.parametrize('aux_logits', [False, True])
def test_torchvision_groups_cut_points_and_freezing(aux_logits):
    model = models.get_model('inception_v3', 10, aux_logits=aux_logits)
    assert isinstance(model, inception_v3.InceptionV3) and model.OFFICIAL_FREEZE_LAYERS is None
    names = [name for name, _ in model.layer_groups]
    mixed = [f'Mixed_{b}' for b in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e')]
    aux = ['AuxLogits'] if aux_logits else []
    assert names == [*inception.STEM, *mixed, *aux, 'Mixed_7a', 'Mixed_7b', 'Mixed_7c', 'head']
    assert model.cut_points == {
        'stage1': 'Mixed_5b',
        'stage2': 'Mixed_6a',
        'stage3': 'Mixed_7a',
        'head': 'head',
    }
    assert model.official_frozen_groups(0) == tuple(names[:-1])
    assert model.official_frozen_groups(2) == inception.STEM[:3]
    assert model.official_frozen_groups(6) == inception.STEM  # index 6 is maxpool2
    assert model.official_frozen_groups(14) == (*inception.STEM, *mixed)
    child_15 = 'AuxLogits' if aux_logits else 'Mixed_7a'
    assert model.official_frozen_groups(15) == (*inception.STEM, *mixed, child_15)
    assert model.official_frozen_groups(99) == tuple(names[:-1])  # never the head


def test_aux_head_is_built_at_init_and_runs_only_in_training():
    model = models.get_model('inception_v3_tiny', 4, aux_logits=True)
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(variables['params']['AuxLogits']) == {'conv0', 'conv1', 'fc'}
    assert variables['params']['AuxLogits']['fc']['kernel'].shape == (48, 4)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']), variables, x
    )
    assert 'aux_logits' not in state.get('intermediates', {})
