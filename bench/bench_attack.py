r"""One GMI attack step: tldmi_jax's latent search (jit) vs the original's eager PyTorch loop.

  PYTHONPATH=. python bench/bench_attack.py [--target=facenet64] [--identities=60] [--seeds=1]
      [--reps=5] [--k=1] [--quick] [--torch-frozen] [--device=auto]

Both sides attack the same full-size models with random weights: the GMI prior at 64 px
(DCGAN generator, 5,142,083 parameters, and WGAN-GP critic, 4,316,545) and the target,
FaceNet64 (IR-50 at 64 px) or TL-DMI's VGG16, with 1000 classes and 64x64x3 inputs. The
PyTorch reference modules of tests/interop (`TorchDCGANGenerator`, `TorchDGWGAN`,
`TorchIR64` / `TorchVGG16` at their full sizes) get random weights, and the library's
converters turn those into the JAX prior and target, so both sides start from the same
weights, the same initial latents and the same labels.

- JAX: `gmi.make_problem` run by `latent_search.LatentSearch`, built as
  `tldmi_jax/attacks/runner.py` builds them, with the hyperparameters of
  `config_lib.attack_config('gmi')` (lr, momentum, lam, clip, reference_batch): the
  [identities, seeds] instances vmapped, a jitted `lax.scan` over a chunk of k steps
  (`LatentSearch._run_chunk`). One step = the time of one chunk / k.
- PyTorch: the loop of the original GMI inversion (TL-DMI `attack.py:inversion`): eager, one
  Python iteration per update, the identities of a batch together, the seeds one after
  another; G, D and T in eval mode. As in the original, the models' parameters keep
  `requires_grad`, so every backward also computes (and accumulates) their weight gradients;
  `--torch-frozen` turns that off (a leaner loop than the original's). One step = one update
  of every seed.

After a warm-up (JAX: the compile) the two sides alternate rep by rep. Prints the machine,
the loss of both sides at the warm-up's last step (the same point when k = 1), the median,
min and max seconds per step of each side, the ratio PyTorch / JAX (> 1 means tldmi_jax is
faster), the JAX compile time, the FLOPs of one step (XLA's cost analysis of the JAX chunk,
used for the achieved FLOP/s of both sides) and the process's peak RSS (on a GPU also each
side's peak device memory). `--quick`: 8 identities, 1 seed, 3 reps. `--device`: where the
PyTorch side runs (auto: CUDA when available); JAX runs on its default backend. The last
stdout line is `BENCH_RESULT {json}` (read by bench/run_all.py). Needs torch
(`pip install -r requirements-test.txt`) and the repository root on the path (the PyTorch
modules are imported from tests/interop).
"""

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

try:
    import torch
except ImportError:
    sys.exit('bench_attack.py needs torch: pip install -r requirements-test.txt')

from bench.bench_common import (
    alternate,
    count,
    cpu_model,
    peak_memory,
    report_medians,
    step_flops,
)
from tests.interop import test_convert as classifier_refs
from tests.interop import test_convert_gans as gan_refs
from tests.interop.test_attack_parity import he_init
from tldmi_jax import attacks, classifiers, config_lib, priors
from tldmi_jax.attacks import common, gmi, latent_search
from tldmi_jax.interop import convert, gan_priors
from tldmi_jax.utils import sharding

CLASSES = 1000
TARGETS = ('facenet64', 'vgg16')  # `convert.KINDS` names, which are also the JAX archs.


def torch_device(name: str) -> torch.device:
    """`auto`: CUDA when PyTorch sees it, else the CPU."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(name)


def torch_models(target: str):
    """Full-size PyTorch G, D, T with random weights, in eval mode (`randomise` sets it).

    The generator gets He-normal weights (as in tests/interop/test_attack_parity.py) so that
    its images vary with z; BatchNorm/InstanceNorm affines, running statistics and PReLU
    slopes are moved away from their defaults.
    """
    torch.manual_seed(0)
    g = gan_refs.randomise(he_init(gan_refs.TorchDCGANGenerator(), seed=1), seed=1)
    d = gan_refs.randomise(gan_refs.TorchDGWGAN(), seed=2)
    t = classifier_refs.randomise(classifier_refs.FULL_SIZE[target](), seed=3)
    return g, d, t


def jax_context(g, d, t, target: str) -> tuple[common.AttackContext, int]:
    """The attack context of the same weights, converted by the library's converters, and
    the target's parameter count."""
    prior, _ = gan_priors.convert_prior_state(
        'gmi', classifier_refs.numpy_state(g), classifier_refs.numpy_state(d)
    )
    _, _, full_spec = priors.build_modules('gmi', image_size=64)
    assert prior.spec == full_spec, (prior.spec, full_spec)  # the original widths, not tiny
    prior.variables = jax.device_put(prior.variables)  # as `priors.load_prior` does
    conv = convert.convert_state_dict(target, classifier_refs.numpy_state(t))
    assert conv.num_classes == CLASSES and conv.image_size == 64, conv.report
    assert not conv.report['left_fresh'], conv.report
    target_fn = classifiers.bind(conv.model, jax.device_put(conv.variables))
    ctx = common.AttackContext(
        prior=prior, target=target_fn, num_classes=conv.num_classes, image_size=conv.image_size
    )
    return ctx, count(conv.params)


class JaxSide:
    """The library's loop: `LatentSearch._run_chunk` on [identities, seeds] instances."""

    def __init__(self, ctx: common.AttackContext, cfg, identities: int, seeds: int, k: int):
        problem = gmi.make_problem(ctx, cfg)
        self.search = latent_search.LatentSearch(
            problem,
            num_seeds=seeds,
            key=jax.random.fold_in(jax.random.key(0), 7),  # runner: config.seed = 0
            checkpoint_every=k,
        )
        self.k = k
        # As `LatentSearch.run_batch`: identities sharded over a 1-D mesh (one CPU device).
        mesh = sharding.data_mesh(identities, self.search.devices)
        shard = NamedSharding(mesh, PartitionSpec('data'))
        self.ids = jax.device_put(np.arange(identities, dtype=np.int32), shard)
        self.seeds = sharding.replicate(np.arange(seeds, dtype=np.int32), mesh)
        latent, opt_state = self.search._init(self.ids, self.seeds, None)
        self.z0 = np.asarray(latent)  # [B, S, z_dim], unclamped N(0, I)
        self.latent = jax.device_put(latent, shard)
        self.opt_state = jax.device_put(opt_state, shard)
        self.step = 0

    def run(self) -> tuple[float, dict]:
        """One chunk of k steps; returns (seconds, aux of the chunk's last step)."""
        tic = time.perf_counter()
        self.latent, self.opt_state, aux = self.search._run_chunk(
            self.latent, self.opt_state, self.ids, self.seeds, self.step, self.k
        )
        jax.block_until_ready((self.latent, self.opt_state, aux))
        seconds = time.perf_counter() - tic
        self.step += self.k
        return seconds, {name: float(value) for name, value in aux.items()}

    def flops(self) -> float | None:
        """FLOPs of one step (XLA's cost analysis of the chunk; lowering, no compile)."""
        return step_flops(
            self.search._run_chunk.lower(
                self.latent, self.opt_state, self.ids, self.seeds, self.step, self.k
            )
        )


class TorchSide:
    """The original GMI loop: eager PyTorch, one Python iteration per update and seed."""

    def __init__(self, g, d, t, z0: np.ndarray, cfg, k: int, frozen: bool, dev: torch.device):
        self.g, self.d, self.t = g.to(dev), d.to(dev), t.to(dev)
        self.dev = dev
        if frozen:
            for module in (g, d, t):
                module.requires_grad_(False)
        self.lr, self.momentum, self.lam, self.clip = cfg.lr, cfg.momentum, cfg.lam, cfg.clip
        self.k = k
        identities, seeds, z_dim = z0.shape
        self.labels = torch.arange(identities, dtype=torch.long, device=dev)
        # Each seed starts from the JAX side's initial latents (the original: torch.randn).
        self.z = [
            torch.from_numpy(z0[:, s].copy()).to(dev).requires_grad_(True) for s in range(seeds)
        ]
        self.v = [torch.zeros(identities, z_dim, device=dev) for _ in range(seeds)]

    def update(self, s: int) -> tuple[float, float]:
        """One iteration of the original's loop for seed s; returns (prior, iden)."""
        z, v = self.z[s], self.v[s]
        fake = self.g(z)
        label = self.d(fake)
        if z.grad is not None:
            z.grad.zero_()
        prior_loss = -label.mean()
        _, out = self.t(fake)
        iden_loss = torch.nn.functional.cross_entropy(out, self.labels)
        total = prior_loss + self.lam * iden_loss
        total.backward()
        v_prev = v.clone()
        v = self.momentum * v - self.lr * z.grad
        z = z + (-self.momentum * v_prev + (1 + self.momentum) * v)
        self.z[s] = torch.clamp(z.detach(), -self.clip, self.clip).requires_grad_(True)
        self.v[s] = v
        return prior_loss.item(), iden_loss.item()  # the original reads both every iteration

    def run(self) -> tuple[float, dict]:
        """k updates of every seed, the seeds one after another; returns (seconds, the mean
        losses of the last update of each seed)."""
        last = []
        tic = time.perf_counter()
        for s in range(len(self.z)):
            for _ in range(self.k):
                prior_loss, iden_loss = self.update(s)
            last.append((prior_loss, iden_loss))
        if self.dev.type == 'cuda':
            torch.cuda.synchronize(self.dev)
        seconds = time.perf_counter() - tic
        prior_loss = float(np.mean([p for p, _ in last]))
        iden_loss = float(np.mean([i for _, i in last]))
        return seconds, {'prior': prior_loss, 'iden': iden_loss}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--target', default='facenet64', choices=TARGETS)
    p.add_argument('--identities', type=int, default=60)
    p.add_argument('--seeds', type=int, default=1)
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--k', type=int, default=1, help='steps per jitted chunk (JAX)')
    p.add_argument('--quick', action='store_true', help='identities 8, seeds 1, reps 3')
    p.add_argument(
        '--torch-frozen',
        action='store_true',
        help='PyTorch: requires_grad off for G, D, T (the original leaves it on)',
    )
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='PyTorch')
    args = p.parse_args()
    if args.quick:
        args.identities, args.seeds, args.reps = 8, 1, 3
    if min(args.identities, args.seeds, args.reps, args.k) < 1:
        p.error('--identities, --seeds, --reps and --k must be >= 1')
    if args.identities > CLASSES:
        p.error(f'--identities must be <= {CLASSES}')

    dev = torch_device(args.device)
    cfg = attacks.hyperparameters(config_lib.attack_config('gmi').attack)
    g, d, t = torch_models(args.target)
    ctx, jax_params = jax_context(g, d, t, args.target)  # converts before G, D, T move to dev
    jax_side = JaxSide(ctx, cfg, args.identities, args.seeds, args.k)
    torch_side = TorchSide(g, d, t, jax_side.z0, cfg, args.k, args.torch_frozen, dev)

    print(f'machine: {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)')
    print(
        f'versions: jax {jax.__version__} (jaxlib {importlib.metadata.version("jaxlib")}), '
        f'torch {torch.__version__}, python {platform.python_version()}'
    )
    print(f'jax devices: {jax.devices()}')
    print(f'torch device: {dev}; threads: {torch.get_num_threads()} (PyTorch default, not set)')
    print(f'jax compilation cache: {jax.config.jax_compilation_cache_dir or "off"}')
    torch_counts = [sum(q.numel() for q in m.parameters()) for m in (t, g, d)]
    jax_counts = [
        jax_params,
        count(ctx.prior.variables['generator']['params']),
        count(ctx.prior.variables['discriminator']['params']),
    ]
    print(
        f'models (full size, random weights; parameters torch / jax): target {args.target} '
        f'{torch_counts[0]:,} / {jax_counts[0]:,}, GMI generator {torch_counts[1]:,} / '
        f'{jax_counts[1]:,}, critic {torch_counts[2]:,} / {jax_counts[2]:,}; '
        f'{CLASSES} classes, 64x64x3'
    )
    print(
        f'attack: gmi, lr={cfg.lr} momentum={cfg.momentum} lam={cfg.lam} clip={cfg.clip} '
        f'reference_batch={cfg.reference_batch}; identities={args.identities} '
        f'seeds={args.seeds} k={args.k} reps={args.reps}'
    )
    grads = 'off (--torch-frozen)' if args.torch_frozen else 'on, as in the original'
    print(f'pytorch: weight gradients of G, D, T {grads}; seeds run one after another')
    flops = jax_side.flops()

    # Warm-up: JAX compiles on its first call (the time includes one run of the chunk).
    compile_s, jax_aux = jax_side.run()
    _, torch_aux = torch_side.run()
    step = args.k - 1
    rows = []
    for side, aux in (('jax', jax_aux), ('pytorch', torch_aux)):
        total = aux['prior'] + cfg.lam * aux['iden']
        assert all(np.isfinite([aux['prior'], aux['iden'], total])), (side, aux)
        rows.append((side, aux['prior'], aux['iden'], total))
    print(f'\nloss at step {step} (means over identities and seeds; prior + lam * iden):')
    print(f'{"side":10} {"prior":>12} {"iden":>12} {"total":>14}')
    for side, prior_loss, iden_loss, total in rows:
        print(f'{side:10} {prior_loss:12.6f} {iden_loss:12.6f} {total:14.6f}')
    rel = abs(rows[0][3] - rows[1][3]) / max(abs(rows[1][3]), 1e-12)
    print(f'relative difference of the totals: {rel:.2e}', end='')
    print(' (same weights, latents and labels: float32 rounding only)' if step == 0 else '')
    latent_diff = None
    if cfg.reference_batch == args.identities:
        z_torch = np.stack([z.detach().cpu().numpy() for z in torch_side.z], axis=1)
        diff = latent_diff = float(np.abs(np.asarray(jax_side.latent) - z_torch).max())
        print(f'latents after the warm-up ({args.k} step(s)): max |z_jax - z_torch| = {diff:.2e}')
    else:
        print(
            f'latents not compared: identities ({args.identities}) != reference_batch '
            f'({cfg.reference_batch}), so the step sizes differ (the original divides by the '
            'batch, this library by reference_batch)'
        )

    sides = {'jax': jax_side, 'pytorch': torch_side}
    times = alternate(sides, args.reps, 's/step', per=args.k)  # Alternating rep by rep.
    medians, ratio = report_medians(times, flops)
    print(
        f'jax compile: {compile_s:.1f} s (first call of the chunk function, one run of the '
        f'chunk included; minus the median chunk: {compile_s - medians["jax"] * args.k:.1f} s)'
    )
    memory = peak_memory(dev)
    print(f'peak RSS of the process: {memory["peak_rss_mb"]:.0f} MiB')
    result = {
        'name': 'gmi_attack',
        'target': args.target,
        'identities': args.identities,
        'seeds': args.seeds,
        'batch': args.identities,
        'k': args.k,
        'reps': args.reps,
        'torch_frozen': args.torch_frozen,
        'quick': args.quick,
        'torch_device': str(dev),
        'jax_backend': jax.default_backend(),
        'jax_s': medians['jax'],
        'torch_s': medians['pytorch'],
        'ratio': ratio,
        'loss_step': step,
        'loss_rel_diff': rel,
        'latent_max_abs_diff': latent_diff,
        'compile_s': compile_s,
        'flops_per_step': flops,
        **memory,
    }
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
