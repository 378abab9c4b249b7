r"""GAN training steps: tldmi_jax's jitted D and G steps vs the originals' eager PyTorch steps.

  PYTHONPATH=. python bench/bench_gan.py [--prior=gmi] [--step=d] [--batch=64] [--reps=5]
      [--target=vgg16] [--quick] [--torch-frozen] [--device=auto]

One row per process: `--step=d` times the critic / discriminator step, `--step=g` the
generator step of the prior `--prior`, at the originals' full sizes (64 px, 1000 classes):

- gmi: GMI's WGAN-GP (DCGAN generator, 5,142,083 parameters; DGWGAN critic, 4,316,545).
  D: -(E D(x) - E D(G(z))) + 10 GP on random interpolates (a double backward);
  G: -E D(G(z)).
- kedmi: KEDMI's semi-supervised GAN (the same generator; MinibatchDiscriminator,
  18,888,936 parameters). D: soft cross-entropy against the target's softmax on the real
  batch + 0.5 [E softplus(lse D(x_u)) - E lse D(x_u) + E softplus(lse D(G(z)))];
  G: L1 feature matching against a second unlabelled batch + 1e-4 entropy of D(G(z)).
- plgmi: PLG-MI's conditional GAN (ResNet generator with class-conditional BatchNorm,
  17,973,379 parameters; spectrally normalised projection discriminator, 11,165,441, one
  power iteration per call in training). D: hinge loss on real (+ U(0, 1/256) noise) and
  fake images with labels; G: -E D(G(z, y), y) + 0.2 max-margin loss of the target on the
  augmented G(z, y) (random resized crop 0.8-1 + flip, brightness/contrast jitter with
  p 0.5, rotation by up to 5 degrees).

kedmi and plgmi are trained against a target, `--target` (TL-DMI's vgg16, ir152 or
facenet64 at 64 px, 1000 classes; ignored for gmi): KEDMI's D step labels the real batch
with it, PLG-MI's G step computes its inversion loss with it. It runs in inference mode on
both sides (the library's default, `config.target.train_mode=False`; the original KEDMI
never calls T.eval()).

Both sides start from the same weights and see the same batch: the PyTorch reference
modules of tests/interop (`TorchDCGANGenerator`, `TorchDGWGAN`,
`TorchMinibatchDiscriminator`, `TorchResNetGenerator`, `TorchSNProjectionDiscriminator`,
and the target of test_convert's `FULL_SIZE`) get random weights, and the library's
converters (`gan_priors.convert_prior_state`, `convert.convert_state_dict`) turn them into
the JAX prior and target. Adam with the recipe of `configs/gan_celeba.py` (lr 2e-4, betas
(0.5, 0.999) for gmi and kedmi, (0, 0.9) for plgmi) on both sides.

- JAX: `gan.make_d_step` / `gan.make_g_step` over `gan_losses.make_loss_fns` with the
  config of `configs/gan_celeba.py:prior=...`, jitted with the state donated, as
  `train.gan.train_and_evaluate` runs them (there on a one-device mesh); the latents,
  interpolation weights, noise and augmentation come from the step's key. The D step also
  runs G in training mode (its BatchNorm statistics follow the fakes), as the originals.
- PyTorch: the loop body of the original (`engine.train_general_gan` for gmi,
  `engine.train_specific_gan` for kedmi, PLG-MI's `train_cgan.py`), eager, one step per
  call, G and D in training mode, draws from torch's RNG. As there, gmi and kedmi freeze
  the module a step does not update (`requires_grad` off) at the start of each step;
  kedmi's soft labels are not detached, so its D step's backward also runs through the
  target (accumulating the target's weight gradients); plgmi freezes nothing: its D step
  backpropagates into G through the undetached fakes and then runs the target on the fakes
  (under no_grad) for its accuracy log, its G step also computes the weight gradients of D
  and the target. PLG-MI's Kornia augmentation is written with `grid_sample` (two
  bilinear warps, as Kornia's crop and rotation), with the transforms of
  `tldmi_jax.priors.plgmi.augment`. `--torch-frozen` makes the PyTorch step do only the
  library step's work: no gradients into the target or into the module the step does not
  update, no logging forward (no change for gmi and for kedmi's G step, which the original
  already restricts so).

The first step of each side is a check and the warm-up (JAX: the compile): the PyTorch step
takes the JAX step's draws (re-derived here from the library's key scheme, `gan.step_key`
and the splits in `gan_losses`), and both losses and gradient norms (of the updated
module, before the optimizer's update) are printed with their relative differences. Those
are float32 rounding (~1e-7 for the losses, ~1e-4 for the gradient norms); GMI's D loss
differs by up to ~2e-4 as its gradient penalty is a norm of input gradients, which jump
where a LeakyReLU input sits within rounding of 0. Then the sides alternate rep by rep;
prints the median, min and max seconds per step, the ratio PyTorch / JAX (> 1 means
tldmi_jax is faster), the JAX compile time, the FLOPs of one step (XLA's cost analysis of
the JAX step, used for the achieved FLOP/s of both sides) and the peak memory. `--quick`:
batch 8, 3 reps (the full architectures). `--device`: where the PyTorch side runs (auto:
CUDA when available); JAX runs on its default backend. The last stdout line is
`BENCH_RESULT {json}` (read by bench/run_all.py). Needs torch (`pip install -r
requirements-test.txt`) and the repository root on the path (the PyTorch modules are
imported from tests/interop, the configs from configs/).
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
    import torch
except ImportError:
    sys.exit('bench_gan.py needs torch: pip install -r requirements-test.txt')

from bench.bench_common import (
    alternate,
    augment,
    count,
    max_margin_loss,
    peak_memory,
    print_machine,
    report_medians,
    step_flops,
    timing_result,
    torch_device,
)
from configs import gan_celeba
from tests.interop import test_convert as classifier_refs
from tests.interop import test_convert_gans as gan_refs
from tests.interop.test_attack_parity import he_init
from tldmi_jax import priors
from tldmi_jax.interop import convert, gan_priors, gans
from tldmi_jax.train import gan, gan_losses

F = torch.nn.functional
CLASSES = 1000
SIZE = 64
TARGETS = ('vgg16', 'ir152', 'facenet64')  # `convert.KINDS` names, also the JAX archs.


# ---------------------------------------------------------------------------------------
# Models: PyTorch references with random weights, and their conversion.


def torch_models(kind: str, target: str | None, batch: dict):
    """Full-size PyTorch G, D (and the target T, or None), random weights, eval mode.

    The DCGAN generator gets He-normal weights (as in bench_attack.py) so that its images
    vary with z; norm affines and running statistics are moved off their defaults; the
    spectral norm's u, v get a few training-mode iterations, as in a trained checkpoint.
    """
    torch.manual_seed(0)
    if kind == 'plgmi':
        g = gan_refs.randomise(gan_refs.TorchResNetGenerator(CLASSES), seed=1)
        d = gan_refs.randomise(gan_refs.TorchSNProjectionDiscriminator(CLASSES), seed=2)
        x = torch.from_numpy(batch['image'][:8]).permute(0, 3, 1, 2)
        gan_refs.warm_spectral_norm(d, x, torch.from_numpy(batch['label'][:8]).long())
    else:
        g = gan_refs.randomise(he_init(gan_refs.TorchDCGANGenerator(), seed=1), seed=1)
        if kind == 'gmi':
            d = gan_refs.randomise(gan_refs.TorchDGWGAN(), seed=2)
        else:
            d = gan_refs.randomise(gan_refs.TorchMinibatchDiscriminator(CLASSES), seed=2)
    t = None
    if target:
        t = classifier_refs.randomise(classifier_refs.FULL_SIZE[target](), seed=3)
    return g, d, t


def jax_models(kind: str, g, d, t, target: str | None):
    """The prior and the target (model, variables) converted from the same weights."""
    prior, _ = gan_priors.convert_prior_state(
        kind, gan_refs.numpy_state(g), gan_refs.numpy_state(d)
    )
    _, _, spec = priors.build_modules(kind, num_classes=CLASSES, image_size=SIZE)
    full = {**spec, **gans.CONVERTED_DEFAULTS.get(kind, {})}
    assert prior.spec == full, (prior.spec, full)  # The original widths, not tiny ones.
    if t is None:
        return prior, None, {}
    conv = convert.convert_state_dict(target, classifier_refs.numpy_state(t))
    assert conv.num_classes == CLASSES and conv.image_size == SIZE, conv.report
    assert not conv.report['left_fresh'], conv.report
    return prior, conv.model, jax.device_put(conv.variables)


# ---------------------------------------------------------------------------------------
# The JAX side: the library's step functions.


def library_draws(kind: str, step: str, prior, n: int, seed: int) -> dict:
    """The random draws of the library's first step (`state.step` 0), re-derived from its key
    scheme: `gan.step_key`, then the splits of `gan_losses.make_loss_fns`. NHWC."""
    key = gan.step_key(seed, jnp.asarray(0, jnp.int32), 0 if step == 'd' else 1)
    if (kind, step) in (('gmi', 'g'), ('kedmi', 'g')):
        k_latent, k_other = key, None  # `latents(key, n)` alone
    else:
        k_latent, k_other = jax.random.split(key)
    kz, ky = jax.random.split(k_latent)
    out = {'z': jax.random.normal(kz, (n, prior.z_dim))}
    if kind == 'plgmi':
        out['y'] = jax.random.randint(ky, (n,), 0, prior.num_classes)
    if (kind, step) == ('gmi', 'd'):
        out['alpha'] = jax.random.uniform(k_other, (n, 1, 1, 1))
    elif (kind, step) == ('plgmi', 'd'):
        out['noise'] = jax.random.uniform(k_other, (n, SIZE, SIZE, 3), maxval=1.0 / 256.0)
    elif (kind, step) == ('plgmi', 'g'):
        out['u'] = jax.random.uniform(k_other, (n, 8))  # `plgmi.augment`'s one draw
    return {name: np.array(value) for name, value in out.items()}


class JaxSide:
    """`gan.make_d_step` or `gan.make_g_step` of the library, jitted, the state donated."""

    def __init__(self, kind: str, step: str, prior, target, target_vars, batch: dict):
        config = gan_celeba.get_config(f'prior={kind}')
        d_loss, g_loss = gan_losses.make_loss_fns(prior, config, target)
        tx = gan_losses.adam(config.optim)  # One per optimizer, as train_and_evaluate.
        self.state = jax.device_put(gan.initial_state(prior, tx, tx))
        make = gan.make_d_step if step == 'd' else gan.make_g_step
        self.fn = jax.jit(
            make(d_loss if step == 'd' else g_loss, tx, config.seed), donate_argnums=0
        )
        self.batch = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()})
        self.target_vars = target_vars
        self.optim, self.seed = config.optim, config.seed
        self.metric = f'{step}/loss'
        self.norm = f'{step}/grad_norm'

    def flops(self) -> float | None:
        return step_flops(self.fn.lower(self.state, self.batch, self.target_vars))

    def run(self) -> tuple[float, dict]:
        tic = time.perf_counter()
        self.state, m = self.fn(self.state, self.batch, self.target_vars)
        jax.block_until_ready((self.state, m))
        seconds = time.perf_counter() - tic
        return seconds, {'loss': float(m[self.metric]), 'grad_norm': float(m[self.norm])}


# ---------------------------------------------------------------------------------------
# The PyTorch side: the originals' loop bodies.


def freeze(module: torch.nn.Module) -> None:
    for q in module.parameters():
        q.requires_grad_(False)


def unfreeze(module: torch.nn.Module) -> None:
    for q in module.parameters():
        q.requires_grad_(True)


def log_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """Over dim 1, shifted by the row maximum (the originals' helper)."""
    m = torch.max(x, dim=1)[0]
    return m + torch.log(torch.sum(torch.exp(x - m.unsqueeze(1)), dim=1))


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KEDMI's soft cross-entropy: the target's softmax is not detached."""
    probs = F.softmax(target_logits, dim=1)
    return -(probs * F.log_softmax(logits, dim=1)).sum() / logits.shape[0]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """KEDMI's `HLoss`: -sum softmax * log_softmax over the batch and the classes."""
    return -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum()


def grad_norm(module: torch.nn.Module) -> float:
    """The global L2 norm of the module's parameter gradients."""
    norms = [q.grad.norm() ** 2 for q in module.parameters() if q.grad is not None]
    return float(torch.stack(norms).sum().sqrt())


class TorchSide:
    """One step of the original's training loop for `kind`, eager PyTorch."""

    def __init__(self, kind, step, g, d, t, batch: dict, optim, frozen: bool, dev):
        self.kind, self.step, self.frozen, self.dev = kind, step, frozen, dev
        self.g, self.d = g.to(dev).train(), d.to(dev).train()
        self.t = t.to(dev).eval() if t is not None else None  # Inference mode (see above).
        if frozen and self.t is not None:
            freeze(self.t)
        if frozen and kind == 'plgmi':  # The module this row's step does not update.
            freeze(self.d if step == 'g' else self.g)
        betas = (optim.b1, optim.b2)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=optim.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=optim.lr, betas=betas)
        nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous().to(dev)
        self.x = nchw(batch['image'])
        self.n = self.x.shape[0]
        if kind == 'kedmi':
            self.x_unl, self.x_unl2 = nchw(batch['unlabeled']), nchw(batch['unlabeled2'])
        if kind == 'plgmi':
            self.y_real = torch.from_numpy(batch['label']).long().to(dev)
        self.z_dim = self.g.l1[0].in_features if kind != 'plgmi' else self.g.l1.in_features
        self.draws = None  # The JAX side's draws, for the first (checked) step.

    def draw(self, name: str, make):
        """`make()` (torch's RNG, as the original), or the JAX side's draw of the check."""
        if self.draws is None:
            return make()
        value = torch.from_numpy(self.draws[name]).to(self.dev)
        if name in ('alpha', 'noise'):
            value = value.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return value.long() if name == 'y' else value

    def latents(self):
        z = self.draw('z', lambda: torch.randn(self.n, self.z_dim, device=self.dev))
        if self.kind != 'plgmi':
            return z, None
        y = self.draw('y', lambda: torch.randint(0, CLASSES, (self.n,), device=self.dev))
        return z, y

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        shape = [real.shape[0]] + [1] * (real.dim() - 1)
        alpha = self.draw('alpha', lambda: torch.rand(shape, device=self.dev))
        x_hat = (real + alpha * (fake - real)).requires_grad_(True)
        out = self.d(x_hat)
        (grad,) = torch.autograd.grad(out, x_hat, torch.ones_like(out), create_graph=True)
        return ((grad.reshape(grad.shape[0], -1).norm(2, dim=1) - 1) ** 2).mean()

    def target_accuracy(self, fake: torch.Tensor, y: torch.Tensor) -> float:
        """PLG-MI's log after each D update: the target's accuracy on the fakes."""
        with torch.no_grad():
            preds = self.t(fake)[-1].max(1, keepdim=True)[1]
            return preds.eq(y.view_as(preds)).sum().item() / fake.shape[0]

    def d_step(self):
        """The D update's forward and backward; returns (loss, D, what runs after the
        optimizer step or None)."""
        g, d, log = self.g, self.d, None
        if self.kind == 'gmi':  # engine.train_general_gan
            freeze(g)
            unfreeze(d)
            z, _ = self.latents()
            fake = g(z)
            wd = d(self.x).mean() - d(fake).mean()
            loss = -wd + 10.0 * self.gradient_penalty(self.x.data, fake.data)
        elif self.kind == 'kedmi':  # engine.train_specific_gan
            freeze(g)
            unfreeze(d)
            z, _ = self.latents()
            fake = g(z)
            with torch.set_grad_enabled(not self.frozen):
                y_prob = self.t(self.x)[-1]
            y = torch.argmax(y_prob, dim=1).view(-1)
            _, out_lab = d(self.x)
            _, out_unl = d(self.x_unl)
            _, out_fake = d(fake)
            loss_lab = soft_cross_entropy(out_lab, y_prob)
            lse_u, lse_f = log_sum_exp(out_unl), log_sum_exp(out_fake)
            loss_unl = 0.5 * (
                torch.mean(F.softplus(lse_u)) - torch.mean(lse_u) + torch.mean(F.softplus(lse_f))
            )
            loss = loss_lab + loss_unl
            torch.mean((out_lab.max(1)[1] == y).float())  # The original's accuracy log.
        else:  # PLG-MI train_cgan.py: the D update of each n_dis iteration
            z, y = self.latents()
            fake = g(z, y)  # Not detached (G frozen with --torch-frozen).
            noise = self.draw('noise', lambda: torch.rand_like(self.x) / 256.0)
            real = self.x + noise  # The original's `_noise_adder` (in its data loader).
            dis_fake, dis_real = d(fake, y), d(real, self.y_real)
            loss = F.relu(1.0 - dis_real).mean() + F.relu(1.0 + dis_fake).mean()
            if not self.frozen:
                log = lambda: self.target_accuracy(fake, y)
        self.opt_d.zero_grad()
        loss.backward()
        return loss, d, log

    def g_step(self):
        """The G update's forward and backward; returns (loss, G, None)."""
        g, d = self.g, self.d
        if self.kind == 'gmi':
            freeze(d)
            unfreeze(g)
            z, _ = self.latents()
            loss = -d(g(z)).mean()
        elif self.kind == 'kedmi':
            freeze(d)
            unfreeze(g)
            z, _ = self.latents()
            mom_gen, out_fake = d(g(z))
            mom_unl, _ = d(self.x_unl2)
            matching = torch.mean((mom_gen.mean(0) - mom_unl.mean(0)).abs())
            loss = matching + 1e-4 * entropy(out_fake)
        else:  # PLG-MI: the G update at the start of each n_dis iteration
            z, y = self.latents()
            fake = g(z, y)
            dis_fake = d(fake, y)
            u = self.draw('u', lambda: torch.rand(self.n, 8, device=self.dev))
            inv = max_margin_loss(self.t(augment(fake, u))[-1], y)
            loss = -dis_fake.mean() + 0.2 * inv
        self.opt_g.zero_grad()
        loss.backward()
        return loss, g, None

    def update(self, check: bool = False) -> dict:
        """One step; with `check`, the loss and the updated module's gradient norm (before
        the optimizer's update)."""
        if self.step == 'd':
            loss, module, log = self.d_step()
        else:
            loss, module, log = self.g_step()
        norm = grad_norm(module) if check else None
        (self.opt_d if self.step == 'd' else self.opt_g).step()
        if log is not None:
            log()
        return {'loss': float(loss.detach()) if check else None, 'grad_norm': norm}

    def run(self) -> tuple[float, dict]:
        tic = time.perf_counter()
        aux = self.update()
        if self.dev.type == 'cuda':
            torch.cuda.synchronize(self.dev)
        return time.perf_counter() - tic, aux


def make_batch(kind: str, n: int) -> dict:
    """What one step of `kind` reads (NHWC, in [0, 1]): the real batch, KEDMI's two
    unlabelled batches, PLG-MI's (pseudo-)labels."""
    image = lambda seed: gan_refs.images(seed=seed, batch=n, size=SIZE)[1]
    batch = {'image': image(0)}
    if kind == 'kedmi':
        batch['unlabeled'], batch['unlabeled2'] = image(1), image(2)
    if kind == 'plgmi':
        batch['label'] = np.random.default_rng(3).integers(0, CLASSES, n).astype(np.int32)
    return batch


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--prior', default='gmi', choices=list(priors.TRAINABLE))
    p.add_argument('--step', default='d', choices=['d', 'g'], help='D (critic) or G step')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--reps', type=int, default=5, help='timed steps of each side')
    p.add_argument('--target', default='vgg16', choices=TARGETS, help='kedmi, plgmi')
    p.add_argument('--quick', action='store_true', help='batch 8, 3 reps')
    p.add_argument(
        '--torch-frozen',
        action='store_true',
        help="PyTorch: only the library step's work (the original computes more)",
    )
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='PyTorch')
    args = p.parse_args()
    if args.quick:
        args.batch, args.reps = 8, 3
    if args.batch < 2 or args.reps < 1:
        p.error('--batch must be >= 2 (BatchNorm) and --reps >= 1')
    kind, step = args.prior, args.step
    target = None if kind == 'gmi' else args.target
    dev = torch_device(args.device)

    batch = make_batch(kind, args.batch)
    g, d, t = torch_models(kind, target, batch)
    prior, t_model, t_vars = jax_models(kind, g, d, t, target)  # before G, D, T move to dev
    jax_side = JaxSide(kind, step, prior, t_model, t_vars, batch)
    torch_side = TorchSide(kind, step, g, d, t, batch, jax_side.optim, args.torch_frozen, dev)

    print_machine(dev)
    names = ('generator', 'discriminator')
    parts = [
        f'{name} {sum(q.numel() for q in m.parameters()):,} / '
        f'{count(prior.variables[name]["params"]):,}'
        for name, m in zip(names, (g, d), strict=True)
    ]
    if t is not None:
        parts.append(
            f'target {target} {sum(q.numel() for q in t.parameters()):,} / '
            f'{count(t_vars["params"]):,}'
        )
    print(f'models ({kind}, full size, random weights; parameters torch / jax): {", ".join(parts)}')
    oc = jax_side.optim
    work = (
        "only the library step's work (--torch-frozen)"
        if args.torch_frozen
        else "the original's loop body"
    )
    print(
        f'step: {step.upper()} of {kind}, batch {args.batch}, {args.reps} reps; Adam lr {oc.lr} '
        f'betas ({oc.b1}, {oc.b2}); pytorch: {work}'
    )
    flops = jax_side.flops()

    # The check, also the warm-up: both sides' first step with the same draws.
    torch_side.draws = library_draws(kind, step, prior, args.batch, jax_side.seed)
    compile_s, jax_aux = jax_side.run()
    torch_aux = torch_side.update(check=True)
    torch_side.draws = None
    for side, aux in (('jax', jax_aux), ('pytorch', torch_aux)):
        assert np.isfinite([aux['loss'], aux['grad_norm']]).all(), (side, aux)
    loss_rel = rel_diff(jax_aux['loss'], torch_aux['loss'])
    norm_rel = rel_diff(jax_aux['grad_norm'], torch_aux['grad_norm'])
    print(f'\nfirst {step.upper()} step, same weights, batch and draws:')
    print(f'{"side":10} {"loss":>14} {"grad norm":>14}')
    for side, aux in (('jax', jax_aux), ('pytorch', torch_aux)):
        print(f'{side:10} {aux["loss"]:14.6f} {aux["grad_norm"]:14.6f}')
    print(f'relative difference: loss {loss_rel:.2e}, gradient norm {norm_rel:.2e}')

    times = alternate({'jax': jax_side, 'pytorch': torch_side}, args.reps, 's/step')
    medians, ratio = report_medians(times, flops)
    print(
        f'jax compile: {compile_s:.1f} s (first call, one step included; minus the median '
        f'step: {compile_s - medians["jax"]:.1f} s)'
    )
    memory = peak_memory(dev)
    print(f'peak RSS of the process: {memory["peak_rss_mb"]:.0f} MiB')
    result = {
        'name': 'gan_step',
        'prior': kind,
        'step': step,
        'target': target,
        'image_size': SIZE,
        'classes': 0 if kind == 'gmi' else CLASSES,
        'batch': args.batch,
        'reps': args.reps,
        'torch_frozen': args.torch_frozen,
        **timing_result(args.quick, dev, medians, ratio, compile_s, flops, memory),
        'loss_step': 0,
        'loss_rel_diff': loss_rel,
        'grad_norm_rel_diff': norm_rel,
    }
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
