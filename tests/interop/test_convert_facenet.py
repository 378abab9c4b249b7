"""`facenet_vggface2`: facenet-pytorch InceptionResnetV1 -> `InceptionResnetV1` -> delta_face.

The PyTorch reference rebuilds facenet-pytorch's `InceptionResnetV1(pretrained='vggface2')`
(stem, Block35 x 5, Mixed_6a, Block17 x 10, Mixed_7a, Block8 x 5, block8, last_linear,
last_bn, L2 normalisation, plus the 8631-way `logits` layer the checkpoint holds) from that
description, with a width multiplier and block counts so the parity test runs the tiny
variant (1/16 width, one block per repeat, 75 px). The full network is checked on shapes only
(meta device, `jax.eval_shape`).
"""

import json

import jax
import ml_collections
import numpy as np
import pytest

from tests.interop import tolerance
from tldmi_jax.evaluation import face
from tldmi_jax.interop import convert
from tldmi_jax.models import inception_resnet_v1 as irv1

torch = pytest.importorskip('torch')
tnn = torch.nn
F = torch.nn.functional

TINY, TINY_REPEATS, TINY_SIZE, TINY_DIM = 1.0 / 16.0, (1, 1, 1), 75, 32


def width(channels, mult):
    """Channel count at a width multiplier, rounded as the JAX model does."""
    return channels if mult == 1.0 else max(1, int(round(channels * mult)))


class TorchBasicConv(tnn.Module):
    """facenet-pytorch `BasicConv2d`: conv without bias, BatchNorm(eps=1e-3), ReLU."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = tnn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TorchResidual(tnn.Module):
    """Block35/17/8: branches (Sequentials of BasicConv2d), 1x1 conv2d with bias, scale, add."""

    def __init__(self, cin, branches, scale, relu=True):
        super().__init__()
        for i, branch in enumerate(branches):
            setattr(self, f'branch{i}', branch)
        self.n, self.scale, self.relu = len(branches), scale, relu
        last = [b[-1] if isinstance(b, tnn.Sequential) else b for b in branches]
        cout = sum(b.conv.out_channels for b in last)
        self.conv2d = tnn.Conv2d(cout, cin, 1)

    def forward(self, x):
        out = torch.cat([getattr(self, f'branch{i}')(x) for i in range(self.n)], 1)
        out = self.conv2d(out) * self.scale + x
        return F.relu(out) if self.relu else out


def block35(cin, w, scale):
    c = lambda n: width(n, w)
    seq = tnn.Sequential
    return TorchResidual(
        cin,
        [
            TorchBasicConv(cin, c(32), 1),
            seq(TorchBasicConv(cin, c(32), 1), TorchBasicConv(c(32), c(32), 3, padding=1)),
            seq(
                TorchBasicConv(cin, c(32), 1),
                TorchBasicConv(c(32), c(32), 3, padding=1),
                TorchBasicConv(c(32), c(32), 3, padding=1),
            ),
        ],
        scale,
    )


def block_factorised(cin, w, mid, k, scale, relu=True):
    """Block17 (mid 128, k 7) and Block8 (mid 192, k 3): 1x1 | 1x1 -> 1xk -> kx1."""
    c = lambda n: width(n, w)
    return TorchResidual(
        cin,
        [
            TorchBasicConv(cin, c(mid), 1),
            tnn.Sequential(
                TorchBasicConv(cin, c(mid), 1),
                TorchBasicConv(c(mid), c(mid), (1, k), padding=(0, k // 2)),
                TorchBasicConv(c(mid), c(mid), (k, 1), padding=(k // 2, 0)),
            ),
        ],
        scale,
        relu,
    )


class TorchMixed6a(tnn.Module):
    def __init__(self, cin, w):
        super().__init__()
        c = lambda n: width(n, w)
        self.branch0 = TorchBasicConv(cin, c(384), 3, stride=2)
        self.branch1 = tnn.Sequential(
            TorchBasicConv(cin, c(192), 1),
            TorchBasicConv(c(192), c(192), 3, padding=1),
            TorchBasicConv(c(192), c(256), 3, stride=2),
        )

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), F.max_pool2d(x, 3, 2)], 1)


class TorchMixed7a(tnn.Module):
    def __init__(self, cin, w):
        super().__init__()
        c = lambda n: width(n, w)
        self.branch0 = tnn.Sequential(
            TorchBasicConv(cin, c(256), 1), TorchBasicConv(c(256), c(384), 3, stride=2)
        )
        self.branch1 = tnn.Sequential(
            TorchBasicConv(cin, c(256), 1), TorchBasicConv(c(256), c(256), 3, stride=2)
        )
        self.branch2 = tnn.Sequential(
            TorchBasicConv(cin, c(256), 1),
            TorchBasicConv(c(256), c(256), 3, padding=1),
            TorchBasicConv(c(256), c(256), 3, stride=2),
        )

    def forward(self, x):
        outs = [self.branch0(x), self.branch1(x), self.branch2(x), F.max_pool2d(x, 3, 2)]
        return torch.cat(outs, 1)


class TorchInceptionResnetV1(tnn.Module):
    """facenet-pytorch `InceptionResnetV1(pretrained='vggface2')`: returns the embedding."""

    def __init__(self, w=1.0, repeats=(5, 10, 5), dim=512, num_classes=8631):
        super().__init__()
        c = lambda n: width(n, w)
        self.conv2d_1a = TorchBasicConv(3, c(32), 3, stride=2)
        self.conv2d_2a = TorchBasicConv(c(32), c(32), 3)
        self.conv2d_2b = TorchBasicConv(c(32), c(64), 3, padding=1)
        self.conv2d_3b = TorchBasicConv(c(64), c(80), 1)
        self.conv2d_4a = TorchBasicConv(c(80), c(192), 3)
        self.conv2d_4b = TorchBasicConv(c(192), c(256), 3, stride=2)
        cin = c(256)
        self.repeat_1 = tnn.Sequential(*[block35(cin, w, 0.17) for _ in range(repeats[0])])
        self.mixed_6a = TorchMixed6a(cin, w)
        cin = c(384) + c(256) + cin
        self.repeat_2 = tnn.Sequential(
            *[block_factorised(cin, w, 128, 7, 0.10) for _ in range(repeats[1])]
        )
        self.mixed_7a = TorchMixed7a(cin, w)
        cin = c(384) + 2 * c(256) + cin
        self.repeat_3 = tnn.Sequential(
            *[block_factorised(cin, w, 192, 3, 0.20) for _ in range(repeats[2])]
        )
        self.block8 = block_factorised(cin, w, 192, 3, 1.0, relu=False)
        self.last_linear = tnn.Linear(cin, dim, bias=False)
        self.last_bn = tnn.BatchNorm1d(dim, eps=1e-3)
        self.logits = tnn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.repeat_3(self.mixed_7a(self.repeat_2(self.mixed_6a(self.repeat_1(x)))))
        x = self.block8(x).mean(dim=(2, 3))
        return F.normalize(self.last_bn(self.last_linear(x)), p=2, dim=1)


def randomise(module, seed=0):
    """He-normal kernels, biases and BatchNorm (2d and 1d) away from their defaults."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.Conv2d | tnn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, tnn.BatchNorm2d | tnn.BatchNorm1d):
                m.weight.copy_(0.8 + 0.4 * torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(3)
    return module.eval()


def test_tiny_parity_and_load_face_model(tmp_path):
    ref = randomise(TorchInceptionResnetV1(TINY, TINY_REPEATS, TINY_DIM, num_classes=7))
    src = tmp_path / 'vggface2_tiny.pt'
    torch.save(ref.state_dict(), src)  # facenet-pytorch's file is a plain state dict
    dst = tmp_path / 'facenet'
    conv = convert.convert_checkpoint(
        'facenet_vggface2',
        str(src),
        str(dst),
        arch='inception_resnet_v1_tiny',
        image_size=TINY_SIZE,
    )
    assert not conv.report['left_fresh'] and conv.num_classes == 7  # logits.weight's rows
    ignored = conv.report['ignored']
    assert {k for k in ignored if not k.endswith('num_batches_tracked')} == {
        'logits.weight',
        'logits.bias',
    }
    assert 'VGGFace2 training identities' in ignored['logits.weight']
    assert not (dst / 'config.json').exists()  # not a classifier for load_classifier
    assert json.loads((dst / 'conversion.json').read_text())['kind'] == 'facenet_vggface2'

    config = ml_collections.ConfigDict(
        {
            'face_model': {'arch': 'inception_resnet_v1_tiny', 'checkpoint': str(dst)},
            'runlocal': False,
            'seed': 0,
        }
    )
    model, variables, origin = face.load_face_model(config)
    assert origin == str(dst)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, size=(4, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    with torch.no_grad():
        emb = ref(torch.from_numpy(x))
    j_emb = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1))
    assert emb.shape == (4, TINY_DIM)
    tolerance.assert_close(j_emb, emb, 'embedding')
    np.testing.assert_allclose(np.linalg.norm(np.asarray(j_emb), axis=1), 1.0, rtol=1e-5)


def test_full_size_parameter_count():
    """The released layout has 23,482,624 parameters without `logits`, from shapes only
    (every key of it maps: `test_convert.py::test_full_size_mapping[facenet_vggface2]`)."""
    with torch.device('meta'):
        ref = TorchInceptionResnetV1()
    assert ref.logits.out_features == 8631  # VGGFace2's training identities (ignored)
    torch_params = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith('logits'))
    assert torch_params == irv1.count_params() == 23_482_624
