"""`fid_inception`: pytorch-fid's FID Inception-v3 -> `FIDInceptionV3` -> `load_inception`.

The PyTorch reference `TorchInception3` rebuilds torchvision's `Inception3` from its
description, with the pool branch of each block as an argument: torchvision's (average
pools that count the padding, optional auxiliary head; the `inception_v3` kind, tested in
`test_convert_highres.py`) or pytorch-fid's `fid_inception_v3()` (`TorchFIDInception`:
no auxiliary head, 1008 classes, `FIDInceptionA/C/E_1/E_2`: average pools that exclude the
padding, a max pool in the last block). A width multiplier lets the parity test run the
tiny stand-in (1/16 width, 75 px). The full network is checked on shapes only (meta device,
`jax.eval_shape`).
"""

import json

import jax
import ml_collections
import numpy as np
import pytest

from tests.interop import tolerance
from tldmi_jax.evaluation import evaluate
from tldmi_jax.interop import convert
from tldmi_jax.interop import inception as inception_map
from tldmi_jax.models import inception

torch = pytest.importorskip('torch')
tnn = torch.nn
F = torch.nn.functional

TINY = 1.0 / 16.0
TINY_SIZE = 75


def width(channels, mult):
    """Channel count at a width multiplier, rounded as `models.inception` does."""
    return channels if mult == 1.0 else max(1, int(round(channels * mult)))


class TorchBasicConv(tnn.Module):
    """torchvision `BasicConv2d`: conv without bias, BatchNorm(eps=1e-3), ReLU."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = tnn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def pool_same(x, pool):
    """3x3 stride-1 pool, padding 1: 'avg' (padding not counted), 'avg_pad' (counted), 'max'."""
    if pool == 'max':
        return F.max_pool2d(x, 3, 1, 1)
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=pool == 'avg_pad')


class TorchA(tnn.Module):
    def __init__(self, cin, pool_features, w, pool='avg'):
        super().__init__()
        c = lambda n: width(n, w)
        self.pool = pool
        self.branch1x1 = TorchBasicConv(cin, c(64), 1)
        self.branch5x5_1 = TorchBasicConv(cin, c(48), 1)
        self.branch5x5_2 = TorchBasicConv(c(48), c(64), 5, padding=2)
        self.branch3x3dbl_1 = TorchBasicConv(cin, c(64), 1)
        self.branch3x3dbl_2 = TorchBasicConv(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = TorchBasicConv(c(96), c(96), 3, padding=1)
        self.branch_pool = TorchBasicConv(cin, c(pool_features), 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(pool_same(x, self.pool))
        return torch.cat([self.branch1x1(x), b5, bd, bp], 1)


class TorchB(tnn.Module):
    def __init__(self, cin, w):
        super().__init__()
        c = lambda n: width(n, w)
        self.branch3x3 = TorchBasicConv(cin, c(384), 3, stride=2)
        self.branch3x3dbl_1 = TorchBasicConv(cin, c(64), 1)
        self.branch3x3dbl_2 = TorchBasicConv(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = TorchBasicConv(c(96), c(96), 3, stride=2)

    def forward(self, x):
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), bd, F.max_pool2d(x, 3, 2)], 1)


class TorchC(tnn.Module):
    def __init__(self, cin, c7, w, pool='avg'):
        super().__init__()
        c = lambda n: width(n, w)
        c7 = c(c7)
        self.pool = pool
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = TorchBasicConv(cin, c(192), 1)
        self.branch7x7_1 = TorchBasicConv(cin, c7, 1)
        self.branch7x7_2 = TorchBasicConv(c7, c7, **row)
        self.branch7x7_3 = TorchBasicConv(c7, c(192), **col)
        self.branch7x7dbl_1 = TorchBasicConv(cin, c7, 1)
        self.branch7x7dbl_2 = TorchBasicConv(c7, c7, **col)
        self.branch7x7dbl_3 = TorchBasicConv(c7, c7, **row)
        self.branch7x7dbl_4 = TorchBasicConv(c7, c7, **col)
        self.branch7x7dbl_5 = TorchBasicConv(c7, c(192), **row)
        self.branch_pool = TorchBasicConv(cin, c(192), 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f'branch7x7dbl_{i}')(bd)
        bp = self.branch_pool(pool_same(x, self.pool))
        return torch.cat([self.branch1x1(x), b7, bd, bp], 1)


class TorchD(tnn.Module):
    def __init__(self, cin, w):
        super().__init__()
        c = lambda n: width(n, w)
        self.branch3x3_1 = TorchBasicConv(cin, c(192), 1)
        self.branch3x3_2 = TorchBasicConv(c(192), c(320), 3, stride=2)
        self.branch7x7x3_1 = TorchBasicConv(cin, c(192), 1)
        self.branch7x7x3_2 = TorchBasicConv(c(192), c(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = TorchBasicConv(c(192), c(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = TorchBasicConv(c(192), c(192), 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f'branch7x7x3_{i}')(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class TorchE(tnn.Module):
    """`FIDInceptionE_1` (pool 'avg'), `_2` ('max') or torchvision's `InceptionE` ('avg_pad')."""

    def __init__(self, cin, pool, w):
        super().__init__()
        c = lambda n: width(n, w)
        self.pool = pool
        self.branch1x1 = TorchBasicConv(cin, c(320), 1)
        self.branch3x3_1 = TorchBasicConv(cin, c(384), 1)
        self.branch3x3_2a = TorchBasicConv(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = TorchBasicConv(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = TorchBasicConv(cin, c(448), 1)
        self.branch3x3dbl_2 = TorchBasicConv(c(448), c(384), 3, padding=1)
        self.branch3x3dbl_3a = TorchBasicConv(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = TorchBasicConv(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch_pool = TorchBasicConv(cin, c(192), 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = pool_same(x, self.pool)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TorchAux(tnn.Module):
    """torchvision `InceptionAux`: avg-pool 5/3, 1x1 and 5x5 BasicConv2d, mean, Linear."""

    def __init__(self, cin, num_classes, w):
        super().__init__()
        c = lambda n: width(n, w)
        self.conv0 = TorchBasicConv(cin, c(128), 1)
        self.conv1 = TorchBasicConv(c(128), c(768), 5)
        self.fc = tnn.Linear(c(768), num_classes)

    def forward(self, x):
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, 3)))
        return self.fc(x.mean(dim=(2, 3)))


TORCHVISION_POOLS = ('avg_pad', 'avg_pad', 'avg_pad', 'avg_pad')
FID_POOLS = ('avg', 'avg', 'avg', 'max')


class TorchInception3(tnn.Module):
    """torchvision `Inception3` (transform_input=False): returns (features, logits).

    `pools` are the pool branches of (the A blocks, the C blocks, Mixed_7b, Mixed_7c). In
    training mode with `aux_logits`, the auxiliary logits are kept in `self.aux`.
    """

    def __init__(self, num_classes=1000, w=1.0, pools=TORCHVISION_POOLS, aux_logits=False):
        super().__init__()
        c = lambda n: width(n, w)
        self.Conv2d_1a_3x3 = TorchBasicConv(3, c(32), 3, stride=2)
        self.Conv2d_2a_3x3 = TorchBasicConv(c(32), c(32), 3)
        self.Conv2d_2b_3x3 = TorchBasicConv(c(32), c(64), 3, padding=1)
        self.Conv2d_3b_1x1 = TorchBasicConv(c(64), c(80), 1)
        self.Conv2d_4a_3x3 = TorchBasicConv(c(80), c(192), 3)
        a_in = (c(192), c(64) + c(64) + c(96) + c(32), c(64) + c(64) + c(96) + c(64))
        blocks_a = ('Mixed_5b', 'Mixed_5c', 'Mixed_5d')
        for name, cin, pool in zip(blocks_a, a_in, (32, 64, 64), strict=True):
            setattr(self, name, TorchA(cin, pool, w, pools[0]))
        cin = a_in[2]
        self.Mixed_6a = TorchB(cin, w)
        cin = c(384) + c(96) + cin
        blocks_c = ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e')
        for name, c7 in zip(blocks_c, (128, 160, 160, 192), strict=True):
            setattr(self, name, TorchC(cin, c7, w, pools[1]))
            cin = 4 * c(192)
        self.AuxLogits = TorchAux(cin, num_classes, w) if aux_logits else None
        self.Mixed_7a = TorchD(cin, w)
        cin = c(320) + c(192) + cin
        self.Mixed_7b = TorchE(cin, pools[2], w)
        cin = c(320) + 4 * c(384) + c(192)
        self.Mixed_7c = TorchE(cin, pools[3], w)
        self.dropout = tnn.Dropout(0.5)
        self.fc = tnn.Linear(cin, num_classes)
        self.aux = None

    def forward(self, x):
        for name in ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3'):
            x = getattr(self, name)(x)
        x = F.max_pool2d(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, 2)
        for name in inception_map.MIXED:
            if name == 'Mixed_7a' and self.AuxLogits is not None and self.training:
                self.aux = self.AuxLogits(x)
            x = getattr(self, name)(x)
        features = x.mean(dim=(2, 3))
        return features, self.fc(self.dropout(features))


class TorchFIDInception(TorchInception3):
    """pytorch-fid `fid_inception_v3()`: returns (pool3 features, logits)."""

    def __init__(self, num_classes=1008, w=1.0):
        super().__init__(num_classes, w, FID_POOLS)


def randomise(module, seed=0):
    """He-normal kernels (a deep ReLU stack keeps its scale) and BN away from defaults."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, tnn.BatchNorm2d):
                m.weight.copy_(0.8 + 0.4 * torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(3)
    return module.eval()


def test_rules_agree_with_torch_name_to_flax():
    """The kind's rules and `models.inception.torch_name_to_flax` name the same leaves."""
    rules = inception_map.fid_inception(inception.FIDInceptionV3())
    for rule in rules:
        collection, path = inception.torch_name_to_flax(rule.src)
        assert rule.dst == '/'.join((collection, *path)), rule


def test_fid_inception_parity_and_load_inception(tmp_path):
    ref = randomise(TorchFIDInception(num_classes=16, w=TINY))
    src = tmp_path / 'pt_inception_tiny.pth'
    torch.save(ref.state_dict(), src)  # pytorch-fid's file is a plain state dict
    dst = tmp_path / 'fid_inception'
    conv = convert.convert_checkpoint(
        'fid_inception', str(src), str(dst), arch='fid_inception_tiny', image_size=TINY_SIZE
    )
    assert conv.num_classes == 16 and not conv.report['left_fresh']
    assert set(conv.report['ignored']) == {
        k for k in ref.state_dict() if k.endswith('num_batches_tracked')
    }
    assert not (dst / 'config.json').exists()  # not a classifier for load_classifier
    assert json.loads((dst / 'conversion.json').read_text())['kind'] == 'fid_inception'

    config = ml_collections.ConfigDict(
        {
            'fid': {'arch': 'fid_inception_tiny', 'inception_checkpoint': str(dst)},
            'runlocal': False,
            'seed': 0,
        }
    )
    model, variables, origin = evaluate.load_inception(config)
    assert origin == str(dst)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, size=(4, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    with torch.no_grad():
        feats, logits = ref(torch.from_numpy(x))
    j_feats, j_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, x.transpose(0, 2, 3, 1)
    )
    assert feats.shape == (4, 128)
    tolerance.assert_close(j_feats, feats, 'features')
    tolerance.assert_close(j_logits, logits, 'logits')


def test_full_size_fid_inception_mapping():
    """The real layout (1008 classes): every key maps, 23,850,960 parameters."""
    with torch.device('meta'):
        ref = TorchFIDInception()
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()}
    conv = convert.convert_state_dict('fid_inception', state)
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(conv.params))
    assert conv.num_classes == inception.NUM_CLASSES and conv.image_size == inception.IMAGE_SIZE
    assert n_params == sum(p.numel() for p in ref.parameters()) == inception.count_params()
    assert n_params == 23_850_960
