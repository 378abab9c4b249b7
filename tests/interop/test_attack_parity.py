"""Attack parity: 10 GMI and KEDMI steps in JAX and in a PyTorch reference loop.

PyTorch reference modules (the tiny GMI/KEDMI GANs of `test_convert_gans`, the tiny TL-DMI
VGG16 of `test_convert`) get random weights, are converted with the library
(`gan_priors.convert_prior`, `convert_checkpoint('vgg16')`) and loaded as the attack runner loads
them (`priors.load_prior`, `classifiers.load`). From the same initial latents,
the project's attack code and a PyTorch transcription of the originals' update give the
same latents within 1e-4 after 10 steps:

- GMI: loss = -mean D(G(z)) + 100 CE(T(G(z)), y); v <- 0.9 v - 0.02 g;
  z <- clamp(z - 0.9 v_prev + 1.9 v, -1, 1). JAX side: `gmi.make_problem` run by
  `LatentSearch.run_batch` (the real loop: vmapped instances, jitted scan).
- KEDMI: z = clamp(mu + exp(log_var / 2) eps, -1, 1) with the same eps on both sides,
  loss = mean softplus(lse(D(G(z)))) - mean lse(D(G(z))) + 100 CE, Adam(0.02) on
  (mu, log_var) from zeros. JAX side: `kedmi.make_problem`'s `loss`, `tx` and `project`,
  stepped as `LatentSearch._update` does, with the step keys chosen here so that eps is
  known. The project evaluates KEDMI's minibatch-discrimination D on each instance alone
  (see `tldmi_jax/attacks/kedmi.py`), so the reference does too (the original scores the
  whole batch at once).

Every instance's loss is divided by `reference_batch`; with reference_batch = the batch
size that is the originals' batch mean, so the gradients agree.
"""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from tests.interop import tolerance
from tests.interop.test_convert import TINY_VGG, TorchVGG16
from tests.interop.test_convert import randomise as randomise_classifier
from tests.interop.test_convert_gans import (
    TorchDCGANGenerator,
    TorchDGWGAN,
    TorchMinibatchDiscriminator,
    save_pair,
)
from tests.interop.test_convert_gans import randomise as randomise_gan
from tldmi_jax import classifiers, config_lib, priors
from tldmi_jax.attacks import common, gmi, kedmi, latent_search
from tldmi_jax.interop import convert, gan_priors

torch = pytest.importorskip('torch')
F = torch.nn.functional

STEPS = 10
BATCH = 4  # identities, one instance each
CLASSES = 5
SIZE = 32
LR, MOMENTUM, LAM, CLIP = 0.02, 0.9, 100.0, 1.0


def he_init(module, seed):
    """He-normal weights: with PyTorch's default init the signal (and the gradient reaching
    z) shrinks ~1000x through G and the 13-conv target, and z would hardly move."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear | torch.nn.ConvTranspose2d):
                fan_in = m.weight[0].numel()
                if isinstance(m, torch.nn.ConvTranspose2d):  # in x k x k taps over s^2 phases
                    fan_in = m.weight.shape[0] * m.weight[0, 0].numel() / 4
                std = (2.0 / fan_in) ** 0.5
                m.weight.copy_(std * torch.randn(m.weight.shape, generator=gen))
    return module


@pytest.fixture(scope='module')
def target(tmp_path_factory):
    """(torch reference, JAX classifier fn) of a tiny TL-DMI VGG16 at 32 px."""
    tmp = tmp_path_factory.mktemp('target')
    with torch.random.fork_rng():  # module scope: outside `seeded_torch`
        torch.manual_seed(1)
        ref = TorchVGG16(CLASSES, **TINY_VGG, image_size=SIZE)
    ref = randomise_classifier(he_init(ref, seed=10), seed=10)
    torch.save({'state_dict': ref.state_dict()}, tmp / 'VGG16_tiny.tar')
    convert.convert_checkpoint(
        'vgg16', str(tmp / 'VGG16_tiny.tar'), str(tmp / 'vgg16'), arch='vgg16_tiny', image_size=SIZE
    )
    model, variables = classifiers.load(str(tmp / 'vgg16'))
    return ref, classifiers.bind(model, variables)


def converted_prior(tmp_path, kind, g_ref, d_ref):
    g_src, d_src = save_pair(tmp_path, g_ref, d_ref)
    dst = str(tmp_path / kind)
    gan_priors.convert_prior(kind, g_src, d_src, dst, arch=f'{kind}_tiny', image_size=SIZE)
    prior = priors.load_prior(dst)
    tiny = priors.make_prior(kind, num_classes=CLASSES, image_size=SIZE, tiny=True)
    assert prior.spec == tiny.spec  # the architecture of the tiny priors
    return prior


def attack_setup(prior, target_fn, module):
    ctx = common.AttackContext(prior=prior, target=target_fn, num_classes=CLASSES, image_size=SIZE)
    cfg = ml_collections.ConfigDict(
        dict(config_lib.ATTACK_DEFAULTS[module.NAME], reference_batch=BATCH)
    )
    assert (cfg.lr, cfg.lam, cfg.clip) == (LR, LAM, CLIP)
    return module.make_problem(ctx, cfg)


def torch_gmi(g, d, t, z0, labels):
    """The GMI update of the originals (Nesterov-style momentum, then the clamp)."""
    z, v = torch.from_numpy(z0.copy()), torch.zeros(z0.shape)
    for _ in range(STEPS):
        z.requires_grad_(True)
        fake = g(z)
        loss = -d(fake).mean() + LAM * F.cross_entropy(t(fake)[1], labels)
        (grad,) = torch.autograd.grad(loss, z)
        v_prev, v = v, MOMENTUM * v - LR * grad
        z = torch.clamp(z.detach() - MOMENTUM * v_prev + (1 + MOMENTUM) * v, -CLIP, CLIP)
    return z.numpy()


def torch_kedmi(g, d, t, eps, labels):
    """The KEDMI update: reparameterised z, Adam on (mu, log_var); D on each sample."""
    z_dim = eps.shape[-1]
    mu = torch.zeros(BATCH, z_dim, requires_grad=True)
    log_var = torch.zeros(BATCH, z_dim, requires_grad=True)
    opt = torch.optim.Adam([mu, log_var], lr=LR)
    for step in range(STEPS):
        z = torch.clamp(mu + torch.exp(0.5 * log_var) * torch.from_numpy(eps[step]), -CLIP, CLIP)
        fake = g(z)
        d_logits = torch.cat([d(fake[i : i + 1])[1] for i in range(BATCH)])
        lse = torch.logsumexp(d_logits, dim=1)
        prior = F.softplus(lse).mean() - lse.mean()
        loss = prior + LAM * F.cross_entropy(t(fake)[1], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mu.detach().numpy(), log_var.detach().numpy()


def test_gmi_attack_parity(tmp_path, target):
    t_ref, target_fn = target
    g_ref = randomise_gan(he_init(TorchDCGANGenerator(dim=8, image_size=SIZE), 11), seed=11)
    d_ref = randomise_gan(TorchDGWGAN(dim=8, image_size=SIZE), seed=12)
    prior = converted_prior(tmp_path, 'gmi', g_ref, d_ref)
    problem = attack_setup(prior, target_fn, gmi)
    search = latent_search.LatentSearch(
        problem, num_seeds=1, key=jax.random.key(0), checkpoint_every=STEPS
    )
    identities = np.arange(BATCH)
    z0, _, _ = search.run_batch(identities, 0)  # the initial latents, unclamped N(0, I)
    z_jax, _, _ = search.run_batch(identities, STEPS)
    z0, z_jax = np.asarray(z0)[:, 0], np.asarray(z_jax)[:, 0]

    z_ref = torch_gmi(g_ref, d_ref, t_ref, z0, torch.from_numpy(identities))
    inside = np.abs(z_ref) < CLIP
    moved = np.abs(z_ref - np.clip(z0, -CLIP, CLIP))[inside]
    assert inside.mean() > 0.5 and np.median(moved) > 0.05  # not a test of the clamp alone
    tolerance.assert_close(z_jax, z_ref, 'GMI latents')


def test_kedmi_attack_parity(tmp_path, target):
    t_ref, target_fn = target
    g_ref = randomise_gan(he_init(TorchDCGANGenerator(dim=8, image_size=SIZE), 13), seed=13)
    d_ref = TorchMinibatchDiscriminator(CLASSES, dim=8, mbd_features=16, mbd_kernel_dims=8,
                                        image_size=SIZE)  # fmt: skip
    randomise_gan(d_ref, seed=14)
    prior = converted_prior(tmp_path, 'kedmi', g_ref, d_ref)
    problem = attack_setup(prior, target_fn, kedmi)
    labels = np.arange(BATCH, dtype=np.int32)

    # One key per (step, instance); `Problem.loss` draws eps = normal(key, (1, z_dim)).
    keys = jax.random.split(jax.random.key(1), STEPS * BATCH).reshape(STEPS, BATCH)
    eps = jax.vmap(jax.vmap(lambda k: jax.random.normal(k, (1, prior.z_dim))[0]))(keys)

    def update(latent, opt_state, label, key):  # `LatentSearch._update` with our key
        (_, _), grad = jax.value_and_grad(problem.loss, has_aux=True)(latent, label, key)
        updates, opt_state = problem.tx.update(grad, opt_state, latent)
        return problem.project(optax.apply_updates(latent, updates)), opt_state

    step = jax.jit(jax.vmap(update))
    latent = jax.vmap(problem.init)(jax.random.split(jax.random.key(2), BATCH))
    opt_state = jax.vmap(problem.tx.init)(latent)
    for t in range(STEPS):
        latent, opt_state = step(latent, opt_state, labels, keys[t])

    mu, log_var = torch_kedmi(
        g_ref, d_ref, t_ref, np.array(eps), torch.from_numpy(labels.astype(np.int64))
    )
    assert np.median(np.abs(mu)) > 0.03 and np.median(np.abs(log_var)) > 0.03  # it moved
    tolerance.assert_close(latent['mu'], mu, 'KEDMI mu')
    tolerance.assert_close(latent['log_var'], log_var, 'KEDMI log_var')
