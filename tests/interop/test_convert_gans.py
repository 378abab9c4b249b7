"""GAN prior converters (GMI, KEDMI, PLG-MI) against PyTorch reference modules written here.

The references rebuild the originals from their descriptions (TL-DMI/KEDMI
`models/generator.py` `Generator`, `models/discri.py` `DGWGAN` and
`MinibatchDiscriminator`; PLG-MI's `ResNetGenerator` with categorical conditional BatchNorm
and `SNResNetProjectionDiscriminator` under `torch.nn.utils.spectral_norm`), parameterised
so the tests run at the tiny widths of `priors.make_prior(..., tiny=True)` and 32 px. Each
test saves random weights the way the originals do (the generator nested under
`state_dict` with DataParallel's `module.` prefix, the discriminator plain or under
`model`), assembles the prior with `gan_priors.convert_prior`, reads it back with
`priors.load_prior` and compares outputs: inference mode, and training mode for the
generators' BatchNorm (outputs and updated running statistics) and the spectral norm's
power iteration (outputs and updated u, v).
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from tests.interop import tolerance
from tests.launch import crash
from tldmi_jax import priors
from tldmi_jax.interop import convert, gan_priors, gans, mapping

torch = pytest.importorskip('torch')
tnn = torch.nn
F = torch.nn.functional
sn = torch.nn.utils.spectral_norm

BATCH = 8
SIZE = 32
CLASSES = 4
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------
# PyTorch references.


def doublings(image_size):
    return int(round(math.log2(image_size / 4)))


class TorchDCGANGenerator(tnn.Module):
    """GMI/KEDMI `Generator`: Linear + BN1d + ReLU, NCHW view 4x4, (ConvT + BN + ReLU) x
    (n - 1), ConvT, sigmoid; 8*dim channels at 4x4 for 64 px."""

    def __init__(self, dim=64, image_size=64, z_dim=100):
        super().__init__()
        n = doublings(image_size)
        width = dim * 2 ** (n - 1)
        self.l1 = tnn.Sequential(
            tnn.Linear(z_dim, width * 16, bias=False), tnn.BatchNorm1d(width * 16), tnn.ReLU()
        )
        ups = []
        for _ in range(n - 1):
            ups.append(
                tnn.Sequential(
                    tnn.ConvTranspose2d(width, width // 2, 5, 2, 2, output_padding=1, bias=False),
                    tnn.BatchNorm2d(width // 2),
                    tnn.ReLU(),
                )
            )
            width //= 2
        last = tnn.ConvTranspose2d(width, 3, 5, 2, 2, output_padding=1)
        self.l2_5 = tnn.Sequential(*ups, last, tnn.Sigmoid())

    def forward(self, z):
        return self.l2_5(self.l1(z).view(z.shape[0], -1, 4, 4))


def conv_in_lrelu(cin, cout, k, s, p):
    return tnn.Sequential(
        tnn.Conv2d(cin, cout, k, s, p), tnn.InstanceNorm2d(cout, affine=True), tnn.LeakyReLU(0.2)
    )


class TorchDGWGAN(tnn.Module):
    """GMI's WGAN-GP critic: Conv + LReLU, (Conv + IN + LReLU) doubling to 4x4, Conv k4."""

    def __init__(self, dim=64, image_size=64):
        super().__init__()
        layers, width = [tnn.Conv2d(3, dim, 5, 2, 2), tnn.LeakyReLU(0.2)], dim
        for _ in range(doublings(image_size) - 1):
            layers.append(conv_in_lrelu(width, 2 * width, 5, 2, 2))
            width *= 2
        layers.append(tnn.Conv2d(width, 1, 4))
        self.ls = tnn.Sequential(*layers)

    def forward(self, x):
        return self.ls(x).view(-1)


class TorchMinibatchDiscrimination(tnn.Module):
    """o_b(x_i) = sum_j exp(-||M_i,b - M_j,b||_1) - 1 appended to the features."""

    def __init__(self, in_features, out_features, kernel_dims):
        super().__init__()
        self.T = tnn.Parameter(torch.randn(in_features, out_features, kernel_dims))

    def forward(self, x):
        a, b, c = self.T.shape
        m = (x @ self.T.reshape(a, b * c)).reshape(-1, b, c)
        dist = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(3)
        return torch.cat([x, torch.exp(-dist).sum(0) - 1], 1)


class TorchMinibatchDiscriminator(tnn.Module):
    """KEDMI's semi-supervised D: 4 x (Conv + IN + LReLU), flatten, MBD, Linear -> K."""

    def __init__(self, num_classes, dim=64, mbd_features=64, mbd_kernel_dims=50, image_size=64):
        super().__init__()
        self.layer1 = conv_in_lrelu(3, dim, 5, 2, 2)
        self.layer2 = conv_in_lrelu(dim, 2 * dim, 5, 2, 2)
        self.layer3 = conv_in_lrelu(2 * dim, 4 * dim, 5, 2, 2)
        self.layer4 = conv_in_lrelu(4 * dim, 4 * dim, 3, 2, 1)
        feat = 4 * dim * (image_size // 16) ** 2
        self.mbd1 = TorchMinibatchDiscrimination(feat, mbd_features, mbd_kernel_dims)
        self.fc_layer = tnn.Linear(feat + mbd_features, num_classes)

    def forward(self, x):
        h = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        feat = h.reshape(x.shape[0], -1)
        return feat, self.fc_layer(self.mbd1(feat))


def upsample(x):
    return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)


class TorchCategoricalBN(tnn.BatchNorm2d):
    """BatchNorm2d without affine, then per-class scale (`weights`) and shift (`biases`)."""

    def __init__(self, num_classes, channels):
        super().__init__(channels, affine=False)
        self.weights = tnn.Embedding(num_classes, channels)
        self.biases = tnn.Embedding(num_classes, channels)
        tnn.init.ones_(self.weights.weight)
        tnn.init.zeros_(self.biases.weight)

    def forward(self, x, y):
        h = super().forward(x)
        return h * self.weights(y)[:, :, None, None] + self.biases(y)[:, :, None, None]


class TorchGenBlock(tnn.Module):
    def __init__(self, cin, cout, num_classes):
        super().__init__()
        self.c1 = tnn.Conv2d(cin, cout, 3, 1, 1)
        self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1)
        self.b1 = TorchCategoricalBN(num_classes, cin)
        self.b2 = TorchCategoricalBN(num_classes, cout)
        self.c_sc = tnn.Conv2d(cin, cout, 1)

    def forward(self, x, y):
        h = self.c1(upsample(F.relu(self.b1(x, y))))
        h = self.c2(F.relu(self.b2(h, y)))
        return self.c_sc(upsample(x)) + h


class TorchResNetGenerator(tnn.Module):
    """PLG-MI generator: Linear, NCHW view, up-blocks nf*2^n -> nf, BN, ReLU, conv1x1, tanh."""

    def __init__(self, num_classes, nf=64, z_dim=128, bottom_width=4, image_size=64):
        super().__init__()
        self.bottom_width = bottom_width
        blocks = int(round(math.log2(image_size / bottom_width)))
        self.l1 = tnn.Linear(z_dim, nf * 2**blocks * bottom_width**2)
        for i in range(blocks):
            cin = nf * 2 ** (blocks - i)
            setattr(self, f'block{i + 2}', TorchGenBlock(cin, cin // 2, num_classes))
        self.blocks = blocks
        self.b6 = tnn.BatchNorm2d(nf)
        self.conv6 = tnn.Conv2d(nf, 3, 1)

    def forward(self, z, y):
        h = self.l1(z).view(z.shape[0], -1, self.bottom_width, self.bottom_width)
        for i in range(self.blocks):
            h = getattr(self, f'block{i + 2}')(h, y)
        return torch.tanh(self.conv6(F.relu(self.b6(h))))


class TorchDisBlock(tnn.Module):
    """Spectrally normalised residual down-block (`optimized`: PLG-MI's first block)."""

    def __init__(self, cin, cout, optimized=False):
        super().__init__()
        self.optimized = optimized
        self.c1 = sn(tnn.Conv2d(cin, cout if optimized else cin, 3, 1, 1))
        self.c2 = sn(tnn.Conv2d(cout if optimized else cin, cout, 3, 1, 1))
        self.c_sc = sn(tnn.Conv2d(cin, cout, 1, 1, 0))

    def forward(self, x):
        if self.optimized:
            h = F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2)
            return self.c_sc(F.avg_pool2d(x, 2)) + h
        h = F.avg_pool2d(self.c2(F.relu(self.c1(F.relu(x)))), 2)
        return F.avg_pool2d(self.c_sc(x), 2) + h


class TorchSNProjectionDiscriminator(tnn.Module):
    """PLG-MI D: 5 SN down-blocks nf -> 16nf, ReLU, sum pool, SN Linear + SN projection."""

    def __init__(self, num_classes, nf=64):
        super().__init__()
        self.block1 = TorchDisBlock(3, nf, optimized=True)
        for i, mult in enumerate((1, 2, 4, 8)):
            setattr(self, f'block{i + 2}', TorchDisBlock(nf * mult, nf * mult * 2))
        self.l6 = sn(tnn.Linear(nf * 16, 1))
        self.l_y = sn(tnn.Embedding(num_classes, nf * 16))

    def forward(self, x, y):
        h = x
        for i in range(1, 6):
            h = getattr(self, f'block{i}')(h)
        h = F.relu(h).sum(dim=(2, 3))
        return (self.l6(h) + (self.l_y(y) * h).sum(1, keepdim=True)).view(-1)


# ---------------------------------------------------------------------------------------
# Helpers.


def randomise(module, seed=0, mbd_scale=0.02):
    """Random weights plus norm affines, running statistics and class embeddings away from
    their defaults; T of minibatch discrimination small enough that o_b is not ~0."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda t, lo, width: t.copy_(lo + width * torch.rand(t.shape, generator=gen))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, TorchCategoricalBN):
                rand(m.weights.weight, 0.5, 1.0)
                m.biases.weight.copy_(0.1 * torch.randn(m.biases.weight.shape, generator=gen))
            if isinstance(m, tnn.BatchNorm1d | tnn.BatchNorm2d | tnn.InstanceNorm2d):
                if m.affine:
                    rand(m.weight, 0.5, 1.0)
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                if m.track_running_stats:
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                    rand(m.running_var, 0.5, 1.0)
                    m.num_batches_tracked.fill_(11)
            elif isinstance(m, TorchMinibatchDiscrimination):
                m.T.copy_(mbd_scale * torch.randn(m.T.shape, generator=gen))
    return module.eval()


def warm_spectral_norm(module, *inputs, steps=3):
    """A few training-mode forwards, so u and v are near the singular vectors as in a
    trained checkpoint (they are random right after `spectral_norm`)."""
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module(*inputs)
    return module.eval()


def numpy_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def save_pair(tmp_path, generator, discriminator, d_nesting='plain'):
    """Saves G as the GMI/KEDMI releases do (`state_dict`, `module.`) and D plain or under
    `model` with an optimizer entry (PLG-MI)."""
    g_path, d_path = tmp_path / 'G.tar', tmp_path / 'D.tar'
    g_state = {f'module.{k}': v for k, v in generator.state_dict().items()}
    torch.save({'state_dict': g_state, 'epoch': 7}, g_path)
    d_state = discriminator.state_dict()
    if d_nesting == 'model':
        opt = torch.optim.Adam(discriminator.parameters()).state_dict()
        torch.save({'model': d_state, 'opt': opt}, d_path)
    else:
        torch.save(d_state, d_path)
    return str(g_path), str(d_path)


def images(seed=0, batch=BATCH, size=SIZE):
    """Images in [0, 1] with per-image coarse structure plus noise, NCHW and NHWC."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(batch, 3, 4, 4))
    x = np.repeat(np.repeat(coarse, size // 4, 2), size // 4, 3)
    x = np.clip(x + 0.1 * rng.normal(size=x.shape), 0.0, 1.0).astype(np.float32)
    return x, x.transpose(0, 2, 3, 1)


def latents(z_dim, seed=0, batch=BATCH):
    return np.random.default_rng(seed).normal(size=(batch, z_dim)).astype(np.float32)


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def close(got, ref, what):
    return tolerance.assert_close(got, ref, what)


def close_trees(got, ref, what):
    got = traverse_util.flatten_dict(got, sep='/')
    ref = traverse_util.flatten_dict(ref, sep='/')
    assert sorted(got) == sorted(ref), what
    for k in ref:
        close(got[k], ref[k], f'{what}: {k}')


def generate(prior, *inputs):
    """`prior.generate` in inference mode, jitted (eager runs compile every op)."""
    return jax.jit(prior.generate)(prior.variables['generator'], *inputs)


def discriminate(prior, *inputs):
    return jax.jit(prior.discriminate)(prior.variables['discriminator'], *inputs)


def check_generator_train_mode(prior, kind, g_ref, z, *label):
    """Training-mode output and updated running statistics against the torch generator."""
    g_ref.train()
    with torch.no_grad():
        out = g_ref(torch.from_numpy(z), *(torch.from_numpy(y) for y in label))
    g_ref.eval()
    fn = jax.jit(
        lambda v, z, *y: prior.generator.apply(v, z, *y, train=True, mutable=['batch_stats'])
    )
    got, updates = fn(prior.variables['generator'], z, *label)
    close(got, nhwc(out), f'{kind} generator, train mode')
    updated = convert.convert_state_dict(
        f'{kind}_generator',
        numpy_state(g_ref),
        arch=f'{kind}_tiny',
        num_classes=prior.num_classes,
        image_size=SIZE,
    )
    close_trees(updates['batch_stats'], updated.batch_stats, f'{kind} running statistics')


def tiny_spec(kind):
    """The spec of `priors.make_prior(kind, num_classes=CLASSES, image_size=32, tiny=True)`."""
    spec = priors.build_modules(kind, num_classes=CLASSES, image_size=SIZE, tiny=True)[2]
    return {**spec, **gans.CONVERTED_DEFAULTS.get(kind, {})}


# ---------------------------------------------------------------------------------------
# Parity, one test per prior family (both of its kinds).


def dcgan_refs(seed=0):
    g = randomise(TorchDCGANGenerator(dim=8, image_size=SIZE, z_dim=100), seed)
    return g


def test_gmi_prior(tmp_path):
    g_ref = dcgan_refs()
    d_ref = randomise(TorchDGWGAN(dim=8, image_size=SIZE), seed=1)
    g_src, d_src = save_pair(tmp_path, g_ref, d_ref)
    dst = tmp_path / 'prior'
    _, report = gan_priors.convert_prior(
        'gmi', g_src, d_src, str(dst), arch='gmi_tiny', image_size=SIZE
    )
    prior = priors.load_prior(str(dst))
    assert prior.spec == tiny_spec('gmi') == report['spec']
    assert json.loads((dst / 'conversion.json').read_text()) == report
    assert report['generator']['ignored'].keys() == {
        k for k in g_ref.state_dict() if k.endswith('num_batches_tracked')
    }
    assert not report['discriminator']['ignored']

    z = latents(100)
    x_t, x_j = images()
    with torch.no_grad():
        fake, scores = g_ref(torch.from_numpy(z)), d_ref(torch.from_numpy(x_t))
    close(generate(prior, z), nhwc(fake), 'gmi generator')
    close(discriminate(prior, x_j), scores, 'gmi critic')
    check_generator_train_mode(prior, 'gmi', g_ref, z)


def test_kedmi_prior(tmp_path):
    g_ref = dcgan_refs(seed=2)
    d_ref = TorchMinibatchDiscriminator(CLASSES, dim=8, mbd_features=16, mbd_kernel_dims=8,
                                        image_size=SIZE)  # fmt: skip
    randomise(d_ref, seed=3)
    g_src, d_src = save_pair(tmp_path, g_ref, d_ref)
    dst = tmp_path / 'prior'
    gan_priors.convert_prior('kedmi', g_src, d_src, str(dst), arch='kedmi_tiny', image_size=SIZE)
    prior = priors.load_prior(str(dst))
    assert prior.spec == tiny_spec('kedmi') and prior.num_classes == CLASSES

    z = latents(100, seed=1)
    x_t, x_j = images(seed=1)
    with torch.no_grad():
        fake = g_ref(torch.from_numpy(z))
        feat, logits = d_ref(torch.from_numpy(x_t))
        mbd = d_ref.mbd1(feat)[:, feat.shape[1] :]
    assert float(mbd.min()) > 0.05  # minibatch discrimination is exercised, not ~0
    close(generate(prior, z), nhwc(fake), 'kedmi generator')
    j_feat, j_logits = discriminate(prior, x_j)
    close(j_feat, feat, 'kedmi discriminator features (NCHW flatten)')
    close(j_logits, logits, 'kedmi discriminator logits')
    check_generator_train_mode(prior, 'kedmi', g_ref, z)


def test_plgmi_prior(tmp_path):
    g_ref = TorchResNetGenerator(CLASSES, nf=8, z_dim=32, image_size=SIZE)
    randomise(g_ref, seed=4)
    d_ref = TorchSNProjectionDiscriminator(CLASSES, nf=8)
    x_t, x_j = images(seed=2)
    y = np.arange(BATCH, dtype=np.int64) % CLASSES
    warm_spectral_norm(randomise(d_ref, seed=5), torch.from_numpy(x_t), torch.from_numpy(y))
    g_src, d_src = save_pair(tmp_path, g_ref, d_ref, d_nesting='model')
    dst = tmp_path / 'prior'
    _, report = gan_priors.convert_prior(
        'plgmi', g_src, d_src, str(dst), arch='plgmi_tiny', image_size=SIZE
    )
    prior = priors.load_prior(str(dst))
    assert prior.spec == tiny_spec('plgmi') and prior.spec['out_act'] == 'tanh'
    assert any('tanh' in note for note in report['notes'])

    z = latents(32, seed=2)
    with torch.no_grad():
        fake = g_ref(torch.from_numpy(z), torch.from_numpy(y))
        scores = d_ref(torch.from_numpy(x_t), torch.from_numpy(y))
    y32 = y.astype(np.int32)
    close(generate(prior, z, y32), nhwc(fake), 'plgmi generator')
    d_vars = prior.variables['discriminator']
    close(discriminate(prior, x_j, y32), scores, 'plgmi discriminator, eval')
    check_generator_train_mode(prior, 'plgmi', g_ref, z, y32)

    # Training mode: one power iteration per layer, then the same scores and vectors.
    d_ref.train()
    with torch.no_grad():
        scores = d_ref(torch.from_numpy(x_t), torch.from_numpy(y))
    fn = jax.jit(
        lambda v, x, y: prior.discriminator.apply(v, x, y, train=True, mutable=['spectral'])
    )
    got, updates = fn(d_vars, x_j, y32)
    close(got, scores, 'plgmi discriminator, train mode')
    updated = convert.convert_state_dict(
        'plgmi_discriminator', numpy_state(d_ref), arch='plgmi_tiny', image_size=SIZE
    )
    close_trees(updates['spectral'], updated.other_collections['spectral'], 'plgmi u, v')


def test_spectral_v_follows_the_kernel_layout():
    """Our power-iteration matrix is kernel.reshape(-1, out).T; torch's is
    weight.reshape(out, -1): the converted v must multiply the same matrix."""
    w = np.random.default_rng(0).normal(size=(5, 3, 3, 2)).astype(np.float32)  # O, I, kh, kw
    v = np.random.default_rng(1).normal(size=3 * 3 * 2).astype(np.float32)
    ours = mapping.oihw_to_hwio(w).reshape(-1, 5).T @ gans.spectral_v_conv(3, 2)(v)
    np.testing.assert_allclose(ours, w.reshape(5, -1) @ v, rtol=1e-6)


@pytest.mark.parametrize(
    'make, count',
    [
        (lambda: TorchDCGANGenerator(), 5_142_083),
        (lambda: TorchDGWGAN(), 4_316_545),
        (lambda: TorchMinibatchDiscriminator(1000), 18_888_936),
        (lambda: TorchResNetGenerator(1000), 17_973_379),
        (lambda: TorchSNProjectionDiscriminator(1000), 11_165_441),
    ],
)
def test_full_size_references_have_the_original_counts(make, count):
    """The references at the originals' sizes (64 px, 1000 classes) have their parameter
    counts (`tests/priors`), so the full-size mapping checks of `test_convert` use them."""
    with torch.device('meta'):
        ref = make()
    assert sum(p.numel() for p in ref.parameters()) == count


# ---------------------------------------------------------------------------------------
# Errors and the launcher.


def test_a_half_alone_is_refused(tmp_path):
    src = tmp_path / 'G.tar'
    torch.save(dcgan_refs().state_dict(), src)
    with pytest.raises(ValueError, match='--kind=gmi --src=GENERATOR --src_d=DISCRIMINATOR'):
        convert.convert_checkpoint('gmi_generator', str(src), str(tmp_path / 'out'))


def test_swapped_halves_list_both_halves():
    g = numpy_state(dcgan_refs())
    d = numpy_state(TorchDGWGAN(dim=8, image_size=SIZE))
    with pytest.raises(convert.ConversionError) as err:
        gan_priors.convert_prior_state('gmi', d, g, arch='gmi_tiny', image_size=SIZE)
    message = str(err.value)
    for needle in ('generator: Cannot convert', 'discriminator: Cannot convert', 'ls.0.weight',
                   'l1.0.weight', 'l2_5.0.0.weight (for params/deconv1/kernel)'):  # fmt: skip
        assert needle in message, (needle, message)


def test_wrong_size_is_a_listed_shape_mismatch():
    g = numpy_state(dcgan_refs())  # 32 px
    d = numpy_state(TorchDGWGAN(dim=8, image_size=SIZE))
    with pytest.raises(convert.ConversionError) as err:
        gan_priors.convert_prior_state('gmi', g, d, arch='gmi_tiny')  # the default 64 px
    message = str(err.value)
    assert 'l2_5.3.weight (for params/deconv4/kernel)' in message
    assert 'ls.5.weight (for params/out/kernel)' in message
    assert 'image_size=64' in message


def test_halves_must_agree_on_the_classes():
    g = numpy_state(TorchResNetGenerator(3, nf=8, z_dim=32, image_size=SIZE))
    d = numpy_state(TorchSNProjectionDiscriminator(5, nf=8))
    with pytest.raises(ValueError, match='the generator has 3, the discriminator has 5'):
        gan_priors.convert_prior_state('plgmi', g, d, arch='plgmi_tiny', image_size=SIZE)


def test_launcher_assembles_a_prior(tmp_path):
    g_src, d_src = save_pair(tmp_path, dcgan_refs(), randomise(TorchDGWGAN(8, SIZE), seed=1))
    dst = tmp_path / 'prior'
    launcher = os.path.join(ROOT, 'launch', 'convert.py')
    common = ['--kind=gmi', f'--src={g_src}', f'--dst={dst}', '--arch=gmi_tiny', '--image_size=32']
    run = lambda *a: subprocess.run(
        [sys.executable, launcher, *a], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    # In this process (test time), as its command line runs it; the second run starts one.
    proc = crash.run_here([sys.executable, launcher, *common, f'--src_d={d_src}'])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['kind'] == 'gmi' and report['spec'] == tiny_spec('gmi')
    assert priors.load_prior(str(dst)).spec == report['spec']
    proc = run(*common)
    assert proc.returncode != 0 and '--src_d' in proc.stderr
