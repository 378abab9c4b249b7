"""The high-resolution torchvision kinds: `resnet101`, `densenet121/169`, `inception_v3`.

Parity of tiny variants against the PyTorch references of `test_convert.py` (ResNet,
DenseNet) and `test_convert_inception.py` (torchvision `Inception3`), with that file's
helpers: random weights and BN statistics, eval and train mode, running statistics. The
full-size mappings and parameter counts are in `test_convert.py::test_full_size_mapping`;
here the sizes the references have in torch, and what only these kinds do: old DenseNet
keys, the auxiliary classifier of Inception-v3, the errors.
"""

import jax
import numpy as np
import pytest

from tests.interop import test_convert as refs
from tests.interop import test_convert_inception as inception_refs
from tldmi_jax import models
from tldmi_jax.interop import convert

torch = pytest.importorskip('torch')

TINY_DENSENET = ((2, 2, 2, 2), 4, 2, 8)  # block layers, growth rate, bn_size, init features
TINY_INCEPTION = 1.0 / 16.0


def he_normal(module):
    """He-normal convs (the deep tiny stacks keep their scale in eval mode); BN is redrawn."""
    return inception_refs.randomise(module)


def n_torch(module):
    return sum(p.numel() for p in module.parameters())


def n_params(tree):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


def test_tiny_references_match_the_registry():
    tiny = models.get_model('densenet121_tiny', 2)
    widths = (tuple(tiny.block_layers), tiny.growth_rate, tiny.bn_size, tiny.init_features)
    assert widths == TINY_DENSENET
    assert models.get_model('inception_v3_tiny', 2).width_mult == TINY_INCEPTION


def test_torch_reference_sizes():
    """The references have torchvision's sizes (its documented ImageNet weights), and the
    parts TL-DMI's official freeze trains (`test_models.py` checks the freeze plans)."""
    with torch.device('meta'):
        resnet18 = refs.FULL_SIZE['resnet18']()
        resnet152 = refs.TorchResNet(
            refs.TorchBottleneck, (3, 8, 36, 3), (64, 128, 256, 512), 64, 530
        )
        densenet121 = refs.FULL_SIZE['densenet121']()
        densenet169 = refs.FULL_SIZE['densenet169']()
        sizes = {
            'densenet121': n_torch(densenet121),
            'densenet169': n_torch(densenet169),
            'inception_v3': n_torch(inception_refs.TorchInception3()),
            'inception_v3_aux': n_torch(inception_refs.TorchInception3(aux_logits=True)),
            'resnet101': n_torch(refs.FULL_SIZE['resnet101']()),
        }
        tldmi = {
            'resnet18': n_torch(resnet18.layer4) + n_torch(resnet18.fc),
            'resnet152_530': n_torch(resnet152.layer4) + n_torch(resnet152.fc),
        }
        for name, net in (('densenet121', densenet121), ('densenet169', densenet169)):
            trained = (net.features.denseblock4, net.features.norm5, net.classifier)
            tldmi[name] = sum(n_torch(m) for m in trained)
    assert sizes == {
        'densenet121': 7_978_856,
        'densenet169': 14_149_480,
        'inception_v3': 23_834_568,
        'inception_v3_aux': 27_161_264,
        'resnet101': 44_549_160,
    }
    assert tldmi == {
        'resnet18': 8_393_728 + 513_000,
        'resnet152_530': 14_964_736 + 1_085_970,
        'densenet121': 3_185_128,
        'densenet169': 7_581_928,
    }


# One parity test per mapping function: `resnet101` shares `torchvision_resnet` with
# `resnet152` (test_convert.py::test_resnet152), `densenet169` shares `torchvision_densenet`
# with `densenet121`; their full-size layouts map key for key (test_full_size_mapping).
def test_densenet121(tmp_path):
    ref = he_normal(refs.TorchDenseNet(*TINY_DENSENET, num_classes=6))
    conv = refs.check_full_model(tmp_path, 'densenet121', ref, 'densenet121_tiny', 32)
    assert conv.num_classes == 6


def _old_key(key):
    """`...denselayer3.norm1.weight` -> `...denselayer3.norm.1.weight` (torchvision < 0.3)."""
    for part in ('norm', 'relu', 'conv'):
        for i in ('1', '2'):
            key = key.replace(f'.{part}{i}.', f'.{part}.{i}.')
    return key


def test_densenet_old_keys_convert_alike():
    state = refs.numpy_state(refs.randomise(refs.TorchDenseNet(*TINY_DENSENET, num_classes=5)))
    old = {_old_key(k): v for k, v in state.items()}
    assert 'features.denseblock2.denselayer1.conv.2.weight' in old
    assert 'features.transition1.norm.weight' in old  # Transitions never changed.
    new = convert.convert_state_dict('densenet121', state, arch='densenet121_tiny')
    aliased = convert.convert_state_dict('densenet121', old, arch='densenet121_tiny')
    refs.close_trees(aliased.variables, new.variables, 'old densenet keys')


def test_inception_v3(tmp_path):
    """Tiny torchvision Inception-v3 (pool branches counting the padding) with AuxLogits.

    At 300 px: the auxiliary head needs a 17 x 17 Mixed_6e, as in torchvision. Eval mode
    (no aux head) is the default model's computation; in training mode the auxiliary
    logits and running statistics match torch's too. That the default conversion ignores
    the AuxLogits keys is checked by test_full_size_mapping.
    """
    ref = he_normal(
        inception_refs.TorchInception3(num_classes=5, w=TINY_INCEPTION, aux_logits=True)
    )
    state = refs.save_and_load(tmp_path, ref)
    kwargs = {'aux_logits': True}
    conv = convert.convert_state_dict(
        'inception_v3', state, arch='inception_v3_tiny', model_kwargs=kwargs
    )
    assert conv.num_classes == 5 and conv.image_size == 75
    assert set(conv.report['ignored']) == {k for k in state if k.endswith('num_batches_tracked')}
    assert conv.config()['model']['kwargs'] == kwargs  # load_classifier rebuilds AuxLogits

    x_t, x_j = (x[:4] for x in refs.images(300))
    with torch.no_grad():
        feats, logits = ref(torch.from_numpy(x_t))
    j_feats, j_logits = jax.jit(lambda v, x: conv.model.apply(v, x))(conv.variables, x_j)
    refs.close(j_feats, feats, 'inception_v3 eval features')
    refs.close(j_logits, logits, 'inception_v3 eval logits')

    refs.train_mode(ref)
    with torch.no_grad():
        feats, logits = ref(torch.from_numpy(x_t))
    model = refs.no_dropout(conv.model)
    (j_feats, j_logits), out = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats', 'intermediates'])
    )(conv.variables, x_j)
    refs.close(j_feats, feats, 'inception_v3 train features')
    refs.close(j_logits, logits, 'inception_v3 train logits')
    refs.close(out['intermediates']['aux_logits'][0], ref.aux, 'inception_v3 train aux logits')
    updated = convert.convert_state_dict(
        'inception_v3', refs.numpy_state(ref), arch='inception_v3_tiny', model_kwargs=kwargs
    )
    refs.close_trees(out['batch_stats'], updated.batch_stats, 'inception_v3 running stats')


def test_full_size_inception_v3_with_aux_logits():
    """torchvision's file converts whole onto `aux_logits=True`: 27,161,264 parameters."""
    with torch.device('meta'):
        ref = inception_refs.TorchInception3(aux_logits=True)
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()}
    conv = convert.convert_state_dict('inception_v3', state, model_kwargs={'aux_logits': True})
    assert set(conv.report['ignored']) == {k for k in state if k.endswith('num_batches_tracked')}
    assert conv.image_size == 299
    assert n_params(conv.params) == n_torch(ref) == 27_161_264


def _tiny_state(kind):
    """A random tiny state dict of the kind's layout, and the tiny arch and kwargs."""
    if kind == 'resnet101':
        ref = refs.TorchResNet(refs.TorchBottleneck, (1, 1, 1, 1), (4, 4, 8, 8), 8, 3)
        kwargs = dict(stage_blocks=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8)
        return refs.numpy_state(ref), 'resnet101', kwargs
    if kind == 'densenet121':
        ref = refs.TorchDenseNet(*TINY_DENSENET, num_classes=3)
        return refs.numpy_state(ref), 'densenet121_tiny', {}
    ref = inception_refs.TorchInception3(3, TINY_INCEPTION, aux_logits=True)
    return refs.numpy_state(ref), 'inception_v3_tiny', {'aux_logits': True}


@pytest.mark.parametrize(
    'kind, drop, extra',
    [
        ('resnet101', 'layer3.0.downsample.1.running_var', 'layer5.0.conv1.weight'),
        (
            'densenet121',
            'features.denseblock2.denselayer2.conv2.weight',
            'features.denseblock5.denselayer1.norm1.weight',
        ),
        ('inception_v3', 'AuxLogits.fc.bias', 'Mixed_8a.branch1x1.conv.weight'),
    ],
)
def test_unmapped_and_missing_keys_are_listed(kind, drop, extra):
    state, arch, kwargs = _tiny_state(kind)
    del state[drop]
    state[extra] = np.zeros(3, np.float32)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_state_dict(kind, state, arch=arch, model_kwargs=kwargs)
    message = str(err.value)
    assert 'source keys with no mapping (1)' in message and f'{extra} (3,)' in message
    assert f'{drop} (for ' in message
