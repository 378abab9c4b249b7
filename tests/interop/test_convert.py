"""Parity of every converter kind against PyTorch reference modules written here.

The references rebuild the original architectures (TL-DMI/KEDMI `VGG16`, `IR152`,
`FaceNet64`, `FaceNet`; face.evoLVe `Backbone`; torchvision `vgg16_bn`, ResNets and
DenseNets) from their descriptions, parameterised so the tests run at the tiny widths of
`tldmi_jax.models` (the high-resolution torchvision kinds' parity tests are in
`test_convert_highres.py`). Each parity test saves a random state dict (plain, and nested under
`state_dict` with DataParallel's `module.` prefix), converts it, and compares features and
logits in inference mode and in training mode (batch statistics, updated running
statistics; dropout off). A full-size mapping check per kind runs on shapes only (torch
modules on the meta device, `jax.eval_shape` on ours).
"""

from collections import OrderedDict

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import celeba, eval_celeba
from tests.interop import test_convert_facenet as facenet_refs
from tests.interop import test_convert_gans as gan_refs
from tests.interop import test_convert_inception as inception_refs
from tests.interop import tolerance
from tldmi_jax import models
from tldmi_jax.interop import convert, torch_load
from tldmi_jax.utils import checkpoint

torch = pytest.importorskip('torch')
tnn = torch.nn

BATCH = 16


# ---------------------------------------------------------------------------------------
# PyTorch references.


def vgg_bn_features(widths, depths):
    """torchvision `vgg*_bn.features`: per block, (Conv3x3, BN, ReLU) x depth, MaxPool."""
    layers, cin = [], 3
    for width, depth in zip(widths, depths, strict=True):
        for _ in range(depth):
            layers += [tnn.Conv2d(cin, width, 3, padding=1), tnn.BatchNorm2d(width), tnn.ReLU()]
            cin = width
        layers.append(tnn.MaxPool2d(2, 2))
    return tnn.Sequential(*layers)


class TorchVGG16(tnn.Module):
    """TL-DMI `VGG16`: features, flatten, BN1d with a frozen zero bias, fc_layer."""

    def __init__(self, num_classes, widths, depths, image_size):
        super().__init__()
        self.feature = vgg_bn_features(widths, depths)
        dim = widths[-1] * (image_size // 2 ** len(depths)) ** 2
        self.bn = tnn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.fc_layer = tnn.Linear(dim, num_classes)

    def forward(self, x):
        f = self.bn(self.feature(x).flatten(1))
        return f, self.fc_layer(f)


class TorchTorchvisionVGG(tnn.Module):
    """torchvision `vgg16_bn`: features, adaptive 7x7 pool, 3-layer classifier."""

    def __init__(self, widths, depths, hidden=4096, num_classes=1000):
        super().__init__()
        self.features = vgg_bn_features(widths, depths)
        self.avgpool = tnn.AdaptiveAvgPool2d(7)
        self.classifier = tnn.Sequential(
            tnn.Linear(widths[-1] * 49, hidden),
            tnn.ReLU(),
            tnn.Dropout(),
            tnn.Linear(hidden, hidden),
            tnn.ReLU(),
            tnn.Dropout(),
            tnn.Linear(hidden, num_classes),
        )


class TorchIRUnit(tnn.Module):
    """face.evoLVe `bottleneck_IR`."""

    def __init__(self, cin, depth, stride):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = tnn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = tnn.Sequential(
                tnn.Conv2d(cin, depth, 1, stride, bias=False), tnn.BatchNorm2d(depth)
            )
        self.res_layer = tnn.Sequential(
            tnn.BatchNorm2d(cin),
            tnn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            tnn.PReLU(depth),
            tnn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            tnn.BatchNorm2d(depth),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_output_layer(width, spatial, feat_dim):
    return tnn.Sequential(
        tnn.BatchNorm2d(width),
        tnn.Dropout(0.5),
        tnn.Flatten(),
        tnn.Linear(width * spatial * spatial, feat_dim),
        tnn.BatchNorm1d(feat_dim),
    )


class TorchIRBackbone(tnn.Module):
    """face.evoLVe `Backbone` (head_spatial set) or the 64-px `Backbone64` (no output_layer)."""

    def __init__(self, stage_units, widths, stem, feat_dim=512, head_spatial=None):
        super().__init__()
        self.input_layer = tnn.Sequential(
            tnn.Conv2d(3, stem, 3, 1, 1, bias=False), tnn.BatchNorm2d(stem), tnn.PReLU(stem)
        )
        units, cin = [], stem
        for n, width in zip(stage_units, widths, strict=True):
            for u in range(n):
                units.append(TorchIRUnit(cin, width, 2 if u == 0 else 1))
                cin = width
        self.body = tnn.Sequential(*units)
        if head_spatial:
            self.output_layer = ir_output_layer(widths[-1], head_spatial, feat_dim)

    def trunk(self, x):
        return self.body(self.input_layer(x))

    def forward(self, x):
        x = self.trunk(x)
        return self.output_layer(x) if hasattr(self, 'output_layer') else x


class TorchIR64(tnn.Module):
    """TL-DMI `IR152` / `FaceNet64`: Backbone64 as `feature`, then output_layer, fc_layer."""

    def __init__(self, num_classes, stage_units, widths, stem, feat_dim, spatial):
        super().__init__()
        self.feature = TorchIRBackbone(stage_units, widths, stem)
        self.output_layer = ir_output_layer(widths[-1], spatial, feat_dim)
        self.fc_layer = tnn.Linear(feat_dim, num_classes)

    def forward(self, x):
        f = self.output_layer(self.feature(x))
        return f, self.fc_layer(f)


class TorchFaceNet112(tnn.Module):
    """Evaluation `FaceNet`: a 112-px Backbone (with its output_layer) and fc_layer."""

    def __init__(self, num_classes, stage_units, widths, stem, feat_dim, spatial, softmax=False):
        super().__init__()
        self.feature = TorchIRBackbone(stage_units, widths, stem, feat_dim, spatial)
        fc = tnn.Linear(feat_dim, num_classes)
        # GMI's variant wraps the Linear with a Softmax (keys fc_layer.0.*).
        self.fc_layer = tnn.Sequential(fc, tnn.Softmax(dim=1)) if softmax else fc

    def forward(self, x):
        f = self.feature(x)
        linear = self.fc_layer[0] if isinstance(self.fc_layer, tnn.Sequential) else self.fc_layer
        return f, linear(f)  # logits (GMI's variant would return probabilities)


class TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.downsample = downsample(cin, width, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (self.downsample(x) if self.downsample else x))


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        out = width * 4
        self.conv1 = tnn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3 = tnn.Conv2d(width, out, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(out)
        self.downsample = downsample(cin, out, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (self.downsample(x) if self.downsample else x))


def downsample(cin, out, stride):
    if stride == 1 and cin == out:
        return None
    return tnn.Sequential(tnn.Conv2d(cin, out, 1, stride, bias=False), tnn.BatchNorm2d(out))


class TorchResNet(tnn.Module):
    """torchvision ResNet (v1.5), returning (pooled features, logits)."""

    def __init__(self, block, stage_blocks, widths, stem, num_classes):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(stem)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        cin = stem
        for s, (n, width) in enumerate(zip(stage_blocks, widths, strict=True)):
            blocks = []
            for b in range(n):
                blocks.append(block(cin, width, 2 if (b == 0 and s > 0) else 1))
                cin = width * block.expansion
            setattr(self, f'layer{s + 1}', tnn.Sequential(*blocks))
        self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for s in range(4):
            x = getattr(self, f'layer{s + 1}')(x)
        f = x.mean(dim=(2, 3))
        return f, self.fc(f)


class TorchDenseLayer(tnn.Module):
    """torchvision `_DenseLayer`: BN-ReLU-conv1x1 (bn_size * growth) -> BN-ReLU-conv3x3."""

    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.norm1 = tnn.BatchNorm2d(cin)
        self.relu1 = tnn.ReLU()
        self.conv1 = tnn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = tnn.BatchNorm2d(bn_size * growth)
        self.relu2 = tnn.ReLU()
        self.conv2 = tnn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class TorchDenseBlock(tnn.ModuleDict):
    """torchvision `_DenseBlock`: layer j sees the concatenation of the input and layers < j."""

    def __init__(self, num_layers, cin, growth, bn_size):
        super().__init__()
        for j in range(num_layers):
            self.add_module(
                f'denselayer{j + 1}', TorchDenseLayer(cin + j * growth, growth, bn_size)
            )

    def forward(self, x):
        outputs = [x]
        for layer in self.values():
            outputs.append(layer(torch.cat(outputs, 1)))
        return torch.cat(outputs, 1)


class TorchDenseNet(tnn.Module):
    """torchvision DenseNet (`features` Sequential, `classifier`): (pooled features, logits)."""

    def __init__(self, block_layers, growth=32, bn_size=4, init=64, num_classes=1000):
        super().__init__()
        layers = OrderedDict(
            conv0=tnn.Conv2d(3, init, 7, 2, 3, bias=False),
            norm0=tnn.BatchNorm2d(init),
            relu0=tnn.ReLU(),
            pool0=tnn.MaxPool2d(3, 2, 1),
        )
        cin = init
        for i, n in enumerate(block_layers):
            layers[f'denseblock{i + 1}'] = TorchDenseBlock(n, cin, growth, bn_size)
            cin += n * growth
            if i != len(block_layers) - 1:
                layers[f'transition{i + 1}'] = tnn.Sequential(
                    OrderedDict(
                        norm=tnn.BatchNorm2d(cin),
                        relu=tnn.ReLU(),
                        conv=tnn.Conv2d(cin, cin // 2, 1, bias=False),
                        pool=tnn.AvgPool2d(2, 2),
                    )
                )
                cin //= 2
        layers['norm5'] = tnn.BatchNorm2d(cin)
        self.features = tnn.Sequential(layers)
        self.classifier = tnn.Linear(cin, num_classes)

    def forward(self, x):
        f = torch.relu(self.features(x)).mean(dim=(2, 3))
        return f, self.classifier(f)


# ---------------------------------------------------------------------------------------
# Helpers.


def randomise(module, seed=0):
    """Random weights, plus BN affine/running stats and PReLU slopes away from defaults."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.BatchNorm1d | tnn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                if m.bias.requires_grad:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, tnn.PReLU):
                m.weight.copy_(0.5 * torch.rand(m.weight.shape, generator=gen))
    return module.eval()


def numpy_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def save_and_load(tmp_path, module):
    """Saves the state dict plain and nested (`state_dict`, `module.`); reads both back."""
    state = module.state_dict()
    torch.save(state, tmp_path / 'plain.pth')
    nested = {'state_dict': {f'module.{k}': v for k, v in state.items()}, 'epoch': 3}
    torch.save(nested, tmp_path / 'nested.tar')
    plain = torch_load.load_state_dict(str(tmp_path / 'plain.pth'))
    wrapped = torch_load.load_state_dict(str(tmp_path / 'nested.tar'))
    assert list(plain) == list(wrapped) == list(state)
    for k in plain:
        np.testing.assert_array_equal(plain[k], wrapped[k])
    return wrapped


def images(image_size, seed=0):
    """A batch of images with per-image coarse structure plus pixel noise, NCHW and NHWC.

    Pure pixel noise makes deep features nearly equal across the batch, and a
    training-mode BatchNorm1d then divides by a tiny batch std, amplifying float32
    rounding (~1e-5 after 13 conv+BN layers) past 1e-4; per-image structure keeps the
    comparison well conditioned.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(BATCH, 3, 4, 4))
    x = np.repeat(np.repeat(coarse, image_size // 4, 2), image_size // 4, 3)
    x = np.clip(x + 0.1 * rng.normal(size=x.shape), 0.0, 1.0).astype(np.float32)
    return x, x.transpose(0, 2, 3, 1)


def close(jax_value, torch_value, what):
    tolerance.assert_close(jax_value, torch_value, what)


def close_trees(jax_tree, ref_tree, what):
    got = traverse_util.flatten_dict(jax_tree, sep='/')
    ref = traverse_util.flatten_dict(ref_tree, sep='/')
    assert sorted(got) == sorted(ref), what
    for k in ref:
        close(got[k], ref[k], f'{what}: {k}')


def train_mode(module):
    """Training mode with dropout off (p = 0), as the parity tests compare."""
    module.train()
    for m in module.modules():
        if isinstance(m, tnn.Dropout):
            m.p = 0.0
    return module


def no_dropout(model):
    return model.clone(dropout_rate=0.0) if hasattr(model, 'dropout_rate') else model


def check_full_model(tmp_path, kind, ref, arch, image_size, model_kwargs=None):
    """Eval- and train-mode parity of a complete classifier conversion."""
    randomise(ref)
    state = save_and_load(tmp_path, ref)
    conv = convert.convert_state_dict(
        kind, state, arch=arch, image_size=image_size, model_kwargs=model_kwargs
    )
    assert conv.report['ignored'].keys() <= {
        k for k in state if k.endswith('num_batches_tracked') or k == 'bn.bias'
    }
    x_t, x_j = images(image_size)
    with torch.no_grad():
        feats, logits = ref(torch.from_numpy(x_t))
    j_feats, j_logits = jax.jit(lambda v, x: conv.model.apply(v, x, train=False))(
        conv.variables, x_j
    )
    close(j_feats, feats, f'{kind} eval features')
    close(j_logits, logits, f'{kind} eval logits')

    train_mode(ref)
    with torch.no_grad():
        feats, logits = ref(torch.from_numpy(x_t))
    model = no_dropout(conv.model)
    (j_feats, j_logits), updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
    )(conv.variables, x_j)
    close(j_feats, feats, f'{kind} train features')
    close(j_logits, logits, f'{kind} train logits')
    updated = convert.convert_state_dict(
        kind, numpy_state(ref), arch=arch, image_size=image_size, model_kwargs=model_kwargs
    )
    close_trees(updates['batch_stats'], updated.batch_stats, f'{kind} running stats')
    return conv


def check_backbone(tmp_path, kind, ref, trunk, arch, image_size, last, dont_load):
    """Parity of a backbone-only conversion: the trunk output (`last` layer) and its stats.

    The converted tree is merged into a fresh model with the config's `init.dont_load`, as
    the trainer does, so the head stays freshly initialised.
    """
    randomise(ref)
    state = save_and_load(tmp_path, ref)
    dst = tmp_path / 'converted'
    conv = convert.convert_checkpoint(
        kind, str(tmp_path / 'nested.tar'), str(dst), arch=arch, image_size=image_size
    )
    assert not (dst / 'config.json').exists()  # not a complete classifier
    loaded = checkpoint.load_model(str(dst))  # what `config.init.checkpoint` reads
    head = [k for k in state if k.startswith(('output_layer.', 'classifier.'))]
    assert head and set(head) <= set(conv.report['ignored'])
    assert conv.report['left_fresh']
    for path in conv.report['left_fresh']:
        assert path.split('/')[1] in {'output_layer', 'fc', 'head_bn'}
    x_t, x_j = images(image_size)
    model = no_dropout(conv.model)
    fresh = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x_j)
    variables = {
        c: checkpoint.merge_params(loaded[c], fresh[c], dont_load, c)
        for c in ('params', 'batch_stats')
    }
    capture = lambda mdl, name: mdl.name == last and name == '__call__'

    def run(v, x, train):
        mutable = ['intermediates', 'batch_stats'] if train else ['intermediates']
        _, state = model.apply(v, x, train=train, mutable=mutable, capture_intermediates=capture)
        return state

    with torch.no_grad():
        out = trunk(torch.from_numpy(x_t)).permute(0, 2, 3, 1)
    got = jax.jit(lambda v, x: run(v, x, False))(variables, x_j)
    close(got['intermediates'][last]['__call__'][0], out, f'{kind} eval trunk')

    train_mode(ref)
    with torch.no_grad():
        out = trunk(torch.from_numpy(x_t)).permute(0, 2, 3, 1)
    got = jax.jit(lambda v, x: run(v, x, True))(variables, x_j)
    close(got['intermediates'][last]['__call__'][0], out, f'{kind} train trunk')
    updated = convert.convert_state_dict(kind, numpy_state(ref), arch=arch, image_size=image_size)
    backbone_stats = {k: v for k, v in got['batch_stats'].items() if k in updated.batch_stats}
    close_trees(backbone_stats, updated.batch_stats, f'{kind} running stats')


TINY_VGG = dict(widths=(8, 16, 32, 64, 64), depths=(2, 2, 3, 3, 3))
TINY_IR = dict(stage_units=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem=8)


def test_tiny_references_match_the_registry():
    """The references' tiny widths are the registry's tiny models."""
    vgg = models.get_model('vgg16_tiny', 2)
    assert (tuple(vgg.widths), tuple(vgg.depths)) == (TINY_VGG['widths'], TINY_VGG['depths'])
    for arch in ('ir152_tiny', 'facenet64_tiny', 'facenet_tiny'):
        ir = models.get_model(arch, 2)
        assert (tuple(ir.stage_units), tuple(ir.widths), ir.stem_width, ir.feat_dim) == (
            TINY_IR['stage_units'],
            TINY_IR['widths'],
            TINY_IR['stem'],
            16,
        )


# ---------------------------------------------------------------------------------------
# One parity test per kind (tiny widths; flatten widths > 1x1 so NCHW order matters).


def test_vgg16(tmp_path):
    # 64 px as the original: the last block is 2x2, so the flatten order is exercised.
    ref = TorchVGG16(5, **TINY_VGG, image_size=64)
    conv = check_full_model(tmp_path, 'vgg16', ref, 'vgg16_tiny', 64)
    assert conv.num_classes == 5
    assert any('frozen-zero BatchNorm1d bias' in n for n in conv.report['notes'])


def test_ir152(tmp_path):
    ref = TorchIR64(6, **TINY_IR, feat_dim=16, spatial=2)
    check_full_model(tmp_path, 'ir152', ref, 'ir152_tiny', 32)


def test_facenet64(tmp_path):
    ref = TorchIR64(3, **TINY_IR, feat_dim=16, spatial=2)
    check_full_model(tmp_path, 'facenet64', ref, 'facenet64_tiny', 32)


@pytest.mark.parametrize('softmax', [False, True])
def test_facenet(tmp_path, softmax):
    ref = TorchFaceNet112(4, **TINY_IR, feat_dim=16, spatial=2, softmax=softmax)
    assert ('fc_layer.0.weight' in ref.state_dict()) == softmax
    check_full_model(tmp_path, 'facenet', ref, 'facenet_tiny', 32)


def test_evolve_ir152(tmp_path):
    ref = TorchIRBackbone(**TINY_IR, feat_dim=16, head_spatial=3)  # 112-px-like head
    dont_load = celeba.get_config('arch=ir152').init.dont_load
    check_backbone(tmp_path, 'evolve_ir152', ref, ref.trunk, 'ir152_tiny', 32, 'body_3', dont_load)


def test_evolve_ir50_keeps_the_embedding_head_as_the_original(tmp_path):
    """All keys (embedding head included) start the evaluation FaceNet, as in the original.

    The tiny 32-px model's body output is 2x2, the spatial size of the reference's head, as
    112 px gives the real head's 7x7.
    """
    ref = randomise(TorchIRBackbone(**TINY_IR, feat_dim=16, head_spatial=2))
    state = save_and_load(tmp_path, ref)
    dst = tmp_path / 'converted'
    conv = convert.convert_checkpoint(
        'evolve_ir50', str(tmp_path / 'nested.tar'), str(dst), arch='facenet_tiny', image_size=32
    )
    assert not (dst / 'config.json').exists()  # fc is left fresh: not a whole classifier
    assert set(conv.report['ignored']) <= {k for k in state if 'num_batches_tracked' in k}
    assert {p.split('/')[1] for p in conv.report['left_fresh']} == {'fc'}
    loaded = checkpoint.load_model(str(dst))  # what `config.init.checkpoint` reads
    dont_load = eval_celeba.get_config().init.dont_load
    model = no_dropout(conv.model)
    x_t, x_j = images(32)
    fresh = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x_j)
    variables = {
        c: checkpoint.merge_params(loaded[c], fresh[c], dont_load, c)
        for c in ('params', 'batch_stats')
    }
    with torch.no_grad():
        embedding = ref(torch.from_numpy(x_t))
    features, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_j)
    close(features, embedding, 'evolve_ir50 eval embedding')
    train_mode(ref)
    with torch.no_grad():
        embedding = ref(torch.from_numpy(x_t))
    (features, _), updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
    )(variables, x_j)
    close(features, embedding, 'evolve_ir50 train embedding')
    updated = convert.convert_state_dict(
        'evolve_ir50', numpy_state(ref), arch='facenet_tiny', image_size=32
    )
    close_trees(updates['batch_stats'], updated.batch_stats, 'evolve_ir50 running stats')

    # FaceNet64 targets start from the same file and leave its 112-px head out.
    target = models.get_model('facenet64_tiny', 4)
    inited = jax.eval_shape(lambda x: target.init(jax.random.key(0), x, train=False), x_j[:1])
    head = celeba.get_config('arch=facenet64').init.dont_load
    merged = checkpoint.merge_params(loaded['params'], inited['params'], head, 'params')
    np.testing.assert_array_equal(
        merged['body_3']['conv1']['kernel'], loaded['params']['body_3']['conv1']['kernel']
    )


def test_evolve_ir50_fresh_head_switch(tmp_path):
    ref = TorchIRBackbone(**TINY_IR, feat_dim=16, head_spatial=3)
    dont_load = eval_celeba.get_config('fresh_head').init.dont_load
    check_backbone(
        tmp_path, 'evolve_ir50_backbone', ref, ref.trunk, 'facenet_tiny', 32, 'body_3', dont_load
    )
    dont_load = celeba.get_config('arch=facenet64').init.dont_load
    check_backbone(
        tmp_path, 'evolve_ir50_backbone', ref, ref.trunk, 'facenet64_tiny', 32, 'body_3', dont_load
    )


def test_vgg16_bn(tmp_path):
    ref = TorchTorchvisionVGG(**TINY_VGG, hidden=32)
    trunk = ref.features[:-1]  # up to conv5_3's ReLU (before the last max-pool)
    dont_load = celeba.get_config('arch=vgg16').init.dont_load
    check_backbone(tmp_path, 'vgg16_bn', ref, trunk, 'vgg16_tiny', 64, 'conv5_3', dont_load)


def test_resnet18(tmp_path):
    ref = TorchResNet(TorchBasicBlock, (1, 1, 1, 1), (8, 8, 16, 16), 8, num_classes=7)
    check_full_model(tmp_path, 'resnet18', ref, 'resnet18_tiny', 32)


def test_resnet152(tmp_path):
    kwargs = dict(stage_blocks=(2, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8)
    ref = TorchResNet(TorchBottleneck, (2, 1, 1, 1), (4, 4, 8, 8), 8, num_classes=3)
    check_full_model(tmp_path, 'resnet152', ref, 'resnet152', 32, model_kwargs=kwargs)


# ---------------------------------------------------------------------------------------
# Full-size key/shape mapping of every kind (shapes only: meta tensors, eval_shape).

FULL_IR50 = dict(stage_units=(3, 4, 14, 3), widths=(64, 128, 256, 512), stem=64)
FULL_IR152 = dict(FULL_IR50, stage_units=(3, 8, 36, 3))
FULL_VGG = dict(widths=(64, 128, 256, 512, 512), depths=(2, 2, 3, 3, 3))

FULL_SIZE = {
    'vgg16': lambda: TorchVGG16(1000, **FULL_VGG, image_size=64),
    'ir152': lambda: TorchIR64(1000, **FULL_IR152, feat_dim=512, spatial=4),
    'facenet64': lambda: TorchIR64(1000, **FULL_IR50, feat_dim=512, spatial=4),
    'facenet': lambda: TorchFaceNet112(1000, **FULL_IR50, feat_dim=512, spatial=7),
    'evolve_ir152': lambda: TorchIRBackbone(**FULL_IR152, head_spatial=7),
    'evolve_ir50': lambda: TorchIRBackbone(**FULL_IR50, head_spatial=7),
    'evolve_ir50_backbone': lambda: TorchIRBackbone(**FULL_IR50, head_spatial=7),
    'vgg16_bn': lambda: TorchTorchvisionVGG(**FULL_VGG),
    'resnet18': lambda: TorchResNet(TorchBasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64, 1000),
    'resnet101': lambda: TorchResNet(TorchBottleneck, (3, 4, 23, 3), (64, 128, 256, 512), 64, 1000),
    'resnet152': lambda: TorchResNet(TorchBottleneck, (3, 8, 36, 3), (64, 128, 256, 512), 64, 1000),
    'densenet121': lambda: TorchDenseNet((6, 12, 24, 16)),
    'densenet169': lambda: TorchDenseNet((6, 12, 32, 32)),
    # As torchvision's file: with AuxLogits, which the kind ignores (the model has none).
    'inception_v3': lambda: inception_refs.TorchInception3(aux_logits=True),
    # The real file has 1008 classes (test_convert_inception checks that layout); 1000 here
    # for the class-count assertion of test_full_size_mapping.
    'fid_inception': lambda: inception_refs.TorchFIDInception(num_classes=1000),
    'facenet_vggface2': lambda: facenet_refs.TorchInceptionResnetV1(num_classes=1000),
    'gmi_generator': lambda: gan_refs.TorchDCGANGenerator(),
    'gmi_critic': lambda: gan_refs.TorchDGWGAN(),
    'kedmi_generator': lambda: gan_refs.TorchDCGANGenerator(),
    'kedmi_discriminator': lambda: gan_refs.TorchMinibatchDiscriminator(1000),
    'plgmi_generator': lambda: gan_refs.TorchResNetGenerator(1000),
    'plgmi_discriminator': lambda: gan_refs.TorchSNProjectionDiscriminator(1000),
}
FULL_COUNTS = {  # torch parameter counts of the released models (cf. tests/launch)
    'vgg16': 16_774_184,  # without the frozen BN1d bias, which our head_bn does not have
    'ir152': 62_599_848,
    'facenet64': 35_437_224,
    # torchvision's documented sizes (ImageNet weights, 1000 classes).
    'resnet18': 11_689_512,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
    'densenet121': 7_978_856,
    'densenet169': 14_149_480,
    'inception_v3': 27_161_264 - 3_326_696,  # without AuxLogits (ignored): 23,834,568
}


def test_every_kind_has_a_full_size_check():
    assert set(FULL_SIZE) == set(convert.KINDS)


@pytest.mark.parametrize('kind', list(FULL_SIZE))
def test_full_size_mapping(kind):
    with torch.device('meta'):
        ref = FULL_SIZE[kind]()
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    conv = convert.convert_state_dict(kind, state)  # the kind's own arch and image size
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(conv.params))
    torch_params = dict(ref.named_parameters())
    ignored_params = [k for k in conv.report['ignored'] if k in torch_params]
    assert n_params == sum(int(np.prod(torch_params[k].shape)) for k in torch_params) - sum(
        int(np.prod(torch_params[k].shape)) for k in ignored_params
    )
    if kind in FULL_COUNTS:
        assert n_params == FULL_COUNTS[kind]
    if convert.KINDS[kind].full_model:
        assert conv.num_classes == 1000 and not conv.report['left_fresh']


def test_evolve_ir50_uses_all_349_keys_and_the_switch_drops_the_head():
    with torch.device('meta'):
        ref = FULL_SIZE['evolve_ir50']()
    state = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in ref.state_dict().items()}
    assert len(state) == 349  # backbone_ir50_ms1m_epoch120.pth
    counters = {k for k in state if k.endswith('num_batches_tracked')}
    full = convert.convert_state_dict('evolve_ir50', state)
    assert set(full.report['ignored']) == counters
    assert full.params['output_layer']['fc']['kernel'].shape == (7 * 7 * 512, 512)
    backbone = convert.convert_state_dict('evolve_ir50_backbone', state)
    head = {k for k in state if k.startswith('output_layer.')}
    assert set(backbone.report['ignored']) == counters | head
    assert 'output_layer' not in backbone.params


# ---------------------------------------------------------------------------------------
# Errors.


def tiny_vgg_state(seed=0):
    return numpy_state(randomise(TorchVGG16(5, **TINY_VGG, image_size=64), seed))


def test_every_problem_is_listed_at_once():
    state = tiny_vgg_state()
    state['extra.weight'] = np.zeros(3, np.float32)
    del state['fc_layer.bias']
    state['feature.0.weight'] = np.zeros((8, 3, 5, 5), np.float32)
    state['feature.3.weight'] = np.zeros((8, 8, 3), np.float32)
    state['bn.bias'] = np.full_like(state['bn.bias'], 0.5)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_state_dict('vgg16', state, arch='vgg16_tiny', image_size=64)
    message = str(err.value)
    for needle in (
        'source keys with no mapping (1)',
        'extra.weight (3,)',
        'fc_layer.bias (for params/fc/bias)',
        'feature.0.weight (8, 3, 5, 5) -> params/conv1_1/conv/kernel (5, 5, 3, 8), '
        'model has (3, 3, 3, 8)',
        'feature.3.weight (8, 8, 3) -> params/conv1_2/conv/kernel: expected a 4-d conv',
        'bn.bias: max |bias| = 0.5',
        'image_size=64',
    ):
        assert needle in message, (needle, message)


def test_wrong_image_size_is_a_listed_shape_mismatch():
    with pytest.raises(convert.ConversionError, match='fc_layer.weight .* -> params/fc/kernel'):
        convert.convert_state_dict('vgg16', tiny_vgg_state(), arch='vgg16_tiny', image_size=32)


def test_tiny_nonzero_frozen_bias_is_accepted_and_reported():
    state = tiny_vgg_state()
    state['bn.bias'] = np.full_like(state['bn.bias'], 1e-7)
    conv = convert.convert_state_dict('vgg16', state, arch='vgg16_tiny', image_size=64)
    assert 'bn.bias' in conv.report['ignored']
    assert any('1e-07' in note for note in conv.report['notes'])


def test_unknown_kind():
    with pytest.raises(ValueError, match='Unknown kind .*vgg16_bn'):
        convert.get_kind('alexnet')


def test_kinds_table_is_extensible(monkeypatch):
    """A new kind is one `Kind` with a mapping function; the engine needs nothing else."""
    from tldmi_jax.interop import mapping

    class Probe(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x, train=False):
            f = x.reshape(x.shape[0], -1)
            return f, nn.Dense(self.num_classes, name='fc')(f)

    monkeypatch.setitem(models.ARCHS, 'probe', Probe)
    kind = convert.Kind('probe', 'probe', lambda model: mapping.linear('head', 'fc'))
    state = {'head.weight': np.ones((2, 16), np.float32), 'head.bias': np.zeros(2, np.float32)}
    conv = convert.convert_state_dict(kind, state, num_classes=2, image_size=4, channels=1)
    assert conv.params['fc']['kernel'].shape == (16, 2)


@pytest.mark.parametrize(
    'family, kind',
    [
        ('torchvision_resnet', 'resnet18'),
        ('torchvision_resnet', 'resnet101'),
        ('torchvision_resnet', 'resnet152'),
        ('torchvision_densenet', 'densenet121'),
        ('torchvision_densenet', 'densenet169'),
    ],
)
def test_family_kinds_read_the_depth_from_the_keys(family, kind):
    with torch.device('meta'):
        keys = list(FULL_SIZE[kind]().state_dict())
    assert convert.kind_for_state(family, keys) == kind
    # DataParallel's `module.` prefix and old DenseNet files (`conv.1`) count alike.
    old = [f'module.{k}' for k in keys]
    if family == 'torchvision_densenet':
        old = [k.replace('conv1.weight', 'conv.1.weight') for k in old]
    assert convert.kind_for_state(family, old) == kind


def test_family_kind_converts_a_checkpoint_and_refuses_other_depths(tmp_path):
    ref = TorchResNet(TorchBasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64, 1000)
    src = str(tmp_path / 'resnet18.pth')
    torch.save(ref.state_dict(), src)
    conversion = convert.convert_checkpoint('torchvision_resnet', src, str(tmp_path / 'out'))
    assert conversion.report['kind'] == 'resnet18' and conversion.report['arch'] == 'resnet18'
    resnet34 = [f'layer3.{b}.conv1.weight' for b in range(6)]
    with pytest.raises(convert.ConversionError, match=r'6 units .* resnet18 \(2\)'):
        convert.kind_for_state('torchvision_resnet', resnet34)
