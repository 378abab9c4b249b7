r"""One PPA optimisation step: tldmi_jax's latent search (jit) vs PPA's eager PyTorch loop.

  PYTHONPATH=. python bench/bench_ppa.py [--resolution=256] [--batch=4] [--steps=3]
      [--width-divisor=1] [--quick] [--torch-frozen] [--device=auto]

One step of PPA's attack (`tldmi_jax/attacks/ppa.py`, stage 2) on a batch of `batch`
candidate w vectors [batch, 512] of one identity: StyleGAN2 synthesis at `resolution` px
(noise 'const'), `(x + 1) / 2` (unclipped, PPA's `clip: false`), a centre crop of 800/1024
of the side (PPA's CenterCrop(800) of FFHQ's 1024 px; 200 at 256 px), a resize to 224 px
(antialiased bilinear), RandomResizedCrop(224, scale (0.9, 1), ratio 1), a ResNet-152 with
530 classes (FaceScrub's: PPA's target), the Poincare loss of its logits, the gradient w.r.t.
w and an Adam update (lr 0.005, betas (0.1, 0.1)); the hyperparameters of
`config_lib.attack_config('ppa')`.

Weights: the Flax models get random weights, drawn as their `init` would draw them but
without compiling it (the StyleGAN2 generator as `priors.make_prior('stylegan2', ...)`, with
its noise strengths, synthesis biases and w_avg moved off zero; the ResNet-152 as Flax's
default init, with BatchNorm affines and running statistics moved off their defaults). The
library's converters run backwards (the rules of `tldmi_jax.interop.stylegan2` and
`tldmi_jax.interop.classifiers.torchvision_resnet`, through
`bench_common.torch_state_from_flax`) put the same weights into the PyTorch references: the
StyleGAN2-ADA reference of tests/interop/torch_stylegan2.py and the torchvision-layout
`TorchResNet` of tests/interop/test_convert.py. Both sides start from the same w: the mapping
network of random z, truncated with psi 0.5 (cutoff 8) as PPA's candidates.

- JAX: `ppa.make_problem` run by `latent_search.LatentSearch.advance` (one step: a jitted
  step on CPU, a jitted scan of one step elsewhere), the candidates as the seeds of one
  identity; `prepare`/`start` (the candidate search) are not used: the latents are set
  directly. Each candidate draws its own crop.
- PyTorch: PPA's `Optimization.optimize` loop: eager, one Python iteration per step over the
  batch, `w` [batch, 1, 512] repeated over the layers, the transformations on the batch (one
  random crop for the whole batch, as torchvision's RandomResizedCrop on a batch), the mean
  Poincare loss, `torch.optim.Adam`. The models' parameters keep `requires_grad` (nothing in
  that loop turns it off), so every backward also computes their weight gradients;
  `--torch-frozen` turns that off. The reference's upfirdn2d and bias_act are plain torch
  ops (the original compiles CUDA kernels for them), which may make it slower than PPA
  itself on a GPU.

Correctness first: the warm-up step of both sides uses the same crop boxes (the JAX side's,
given to the PyTorch side), and the two losses are printed with their relative difference
(float32 rounding: the library's crop resamples the whole image where torchvision crops
first, which changes only the outermost pixels of a crop, and the gradient by about 1%).
Adam's first step is about lr * sign(gradient), so the share of w components that stepped
the same way on both sides is printed too (the others have near-zero gradients; the PyTorch
loss is the batch mean where the JAX loss of an instance is divided by PPA's batch of 25,
which matters only through Adam's epsilon). Then the sides alternate step by step; prints
the median, min and max seconds per step, the ratio PyTorch / JAX (> 1: tldmi_jax is
faster), the JAX compile time, the FLOPs of one step (XLA's cost analysis of the JAX chunk)
and the peak RSS of the process at this batch size (on a GPU each side's peak device
memory).

`--width-divisor N` divides every channel width of both networks by N (StyleGAN2
channel_base and channel_max, the ResNet's stem and stage widths; depths unchanged).
`--quick` (run_all.py --quick; about 1.5 minutes on 2 busy CPU cores, most of it the JAX
compile): 256 px, widths / 4, batch 2, 2 steps. Defaults: 256 px at full width; batch 4 and
3 steps on a CPU, batch 25 (PPA's) and 10 steps when PyTorch or JAX sees a GPU. `--device`:
where the PyTorch side runs (auto: CUDA when available); JAX runs on its default backend.
The last stdout line is `BENCH_RESULT {json}` (read by bench/run_all.py). Needs torch
(requirements-test.txt) and the repository root on the path.
"""

import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

try:
    import torch
except ImportError:
    sys.exit('bench_ppa.py needs torch: pip install -r requirements-test.txt')

from bench.bench_common import (
    alternate,
    count,
    peak_memory,
    print_machine,
    report_medians,
    step_flops,
    timing_result,
    torch_device,
    torch_state_from_flax,
)
from tests.interop import test_convert as classifier_refs
from tests.interop import torch_stylegan2 as torch_sg2
from tldmi_jax import attacks, classifiers, config_lib, models, priors
from tldmi_jax.attacks import common, latent_search, ppa
from tldmi_jax.data import augment
from tldmi_jax.interop import classifiers as classifier_rules
from tldmi_jax.interop import stylegan2 as sg2_rules
from tldmi_jax.priors import stylegan2
from tldmi_jax.utils import sharding

F = torch.nn.functional
CLASSES = 530  # FaceScrub's identities: PPA's ResNet-152 target.
TARGET = 'resnet152'
TARGET_SIZE = 224
LABEL = 0  # The attacked identity (PPA optimises a batch of one target's candidates).
CROP_AT_1024 = 800  # PPA's CenterCrop(800) of FFHQ's 1024 px, scaled to the resolution.
FULL_WIDTH = dict(channel_base=32768, channel_max=512)  # FFHQ's StyleGAN2.
RESNET_WIDTHS, RESNET_STEM = (64, 128, 256, 512), 64  # torchvision's ResNet-152.
QUICK_DIVISOR = 4  # --quick: a quarter of every width of both networks.


def random_prior(resolution: int, channel_base: int, channel_max: int) -> priors.Prior:
    """A StyleGAN2 prior with random weights, drawn as `priors.make_prior` draws them but
    without compiling its `init` (about 20 s on 2 CPU cores): kernels, the constant and the
    noise buffers N(0, 1) (mapping kernels N(0, 1) / mapping_lr), the affines' biases 1;
    the noise strengths and synthesis biases (zero there) 0.1 * N(0, 1) and w_avg (zero
    there) N(0, 1), so that the conversion of each shows in the outputs."""
    g, _, spec = priors.build_modules(
        stylegan2.KIND, image_size=resolution, channel_base=channel_base, channel_max=channel_max
    )
    shapes = priors.abstract_variables(spec)['generator']
    rng = np.random.default_rng(1)
    flat = {}
    for path, s in traverse_util.flatten_dict(shapes, sep='/').items():
        normal = rng.standard_normal(s.shape)
        if path.endswith('/bias') and '/affine/' in path:
            value = np.ones(s.shape)
        elif path.endswith(('/bias', 'noise_strength')):
            value = 0.1 * normal
        elif path.startswith('params/mapping/') and path.endswith('/kernel'):
            value = normal / spec['mapping_lr']
        else:  # kernels, const, noise_const, w_avg
            value = normal
        flat[path] = value.astype(np.float32)
    variables = {'generator': traverse_util.unflatten_dict(flat, sep='/')}
    return priors.from_modules(g, None, spec, jax.device_put(variables))


def random_target(model, seed: int = 2) -> dict:
    """Random ResNet variables without compiling `init`: kernels N(0, 1 / fan_in) (Flax's
    default lecun_normal, untruncated), BatchNorm scales and running variances in [0.5, 1.5)
    (the scales of each block's last BN in [0.1, 0.3)), biases and running means
    0.1 * N(0, 1)."""
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)  # The shapes do not depend on it.
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, s in traverse_util.flatten_dict(shapes, sep='/').items():
        name = path.rsplit('/', 1)[-1]
        if name == 'kernel':
            value = rng.standard_normal(s.shape) / math.sqrt(math.prod(s.shape[:-1]))
        elif name == 'scale' and '/bn3/' in path:
            # Small (a block adds little to its input): the logits stay about N(0, 1).
            value = 0.1 + 0.2 * rng.random(s.shape)
        elif name in ('scale', 'var'):
            value = 0.5 + rng.random(s.shape)
        else:  # bias, mean
            value = 0.1 * rng.standard_normal(s.shape)
        flat[path] = value.astype(np.float32)
    return jax.device_put(traverse_util.unflatten_dict(flat, sep='/'))


def load_into(module: torch.nn.Module, rules, variables, may_miss: str) -> torch.nn.Module:
    """`module` in eval mode with the Flax `variables` (every tensor but names containing
    `may_miss`, which no rule maps)."""
    state = torch_state_from_flax(rules, variables, module.state_dict())
    missing, unexpected = module.load_state_dict(state, strict=False)
    left = [k for k in missing if may_miss not in k]
    assert not left and not unexpected, (left, unexpected)
    return module.eval()


def ppa_config(resolution: int, batch: int):
    """PPA's hyperparameters, the centre crop scaled to `resolution`, `batch` candidates."""
    cfg = attacks.hyperparameters(config_lib.attack_config('ppa').attack)
    cfg.crop = round(CROP_AT_1024 * resolution / 1024)
    cfg.num_seeds = batch
    cfg.final = min(cfg.final, batch)  # Not used here; `make_problem` checks it.
    return cfg


class JaxSide:
    """The library's loop: `LatentSearch.advance` on one identity x `batch` seeds."""

    def __init__(self, ctx: common.AttackContext, cfg, batch: int):
        self.problem = ppa.make_problem(ctx, cfg)
        self.search = latent_search.LatentSearch(
            self.problem,
            num_seeds=batch,
            key=jax.random.fold_in(jax.random.key(0), 7),  # runner: config.seed = 0
            checkpoint_every=1,
        )
        g, g_vars = ctx.prior.generator, ctx.prior.variables['generator']
        z = jax.random.normal(jax.random.key(1), (batch, ctx.prior.z_dim))
        cutoff = None if cfg.cutoff is None else int(cfg.cutoff)
        ws = jax.jit(lambda v, z: g.apply(v, z, float(cfg.psi), cutoff, method='map'))(g_vars, z)
        self.w0 = np.asarray(ws[:, 0])  # [batch, w_dim]: `single_w`, PPA's candidates' w
        # As `LatentSearch.run_batch`: the identity axis sharded over a 1-D mesh.
        mesh = sharding.data_mesh(1, self.search.devices)
        shard = NamedSharding(mesh, PartitionSpec('data'))
        self.ids = jax.device_put(np.array([LABEL], np.int32), shard)
        self.seeds = sharding.replicate(np.arange(batch, dtype=np.int32), mesh)
        latent = jnp.asarray(self.w0)[None]  # [1, batch, w_dim]
        opt_state = jax.vmap(jax.vmap(self.problem.tx.init))(latent)
        self.latent = jax.device_put(latent, shard)
        self.opt_state = jax.device_put(opt_state, shard)
        self.step = 0

    def crop_boxes(self, cfg, step: int) -> np.ndarray:
        """[batch, 4] (top, left, height, width): each instance's RandomResizedCrop box at
        `step`, drawn from its step key as `LatentSearch._update` and `ppa`'s loss draw it."""
        scale, ratio = tuple(cfg.crop_scale), tuple(cfg.crop_ratio)

        def boxes(ids, seeds):
            keys = self.search._keys(ids, seeds)[0]
            steps = jax.vmap(lambda k: jax.random.fold_in(latent_search._purpose_keys(k)[1], step))
            draw = lambda k: augment.crop_box(k, TARGET_SIZE, TARGET_SIZE, scale, ratio)
            return jax.vmap(draw)(steps(keys))

        return np.asarray(jax.jit(boxes)(self.ids, self.seeds)).astype(int)

    def run(self) -> tuple[float, dict]:
        """One step; returns (seconds, aux of the step: means over the batch)."""
        tic = time.perf_counter()
        self.latent, self.opt_state, aux = self.search.advance(
            self.latent, self.opt_state, self.ids, self.seeds, self.step, 1
        )
        jax.block_until_ready((self.latent, self.opt_state, aux))
        seconds = time.perf_counter() - tic
        self.step += 1
        return seconds, {name: float(value) for name, value in aux.items()}

    def flops(self) -> float | None:
        """FLOPs of one step (XLA's cost analysis of the step; lowering, no compile)."""
        return step_flops(
            self.search.lower_step(self.latent, self.opt_state, self.ids, self.seeds, self.step)
        )


def poincare_loss(logits: torch.Tensor, labels: torch.Tensor, xi: float = ppa.POINCARE_XI):
    """PPA's Poincare loss of every row: arccosh(1 + 2 |u - v|^2 / ((1 - |u|^2)(1 - |v|^2)))
    of the L1-normalised logits u and the one-hot target v less xi."""
    u = logits / logits.abs().sum(dim=1, keepdim=True)
    v = (F.one_hot(labels, logits.shape[1]).float() - xi).clamp(0.0, 1.0)
    delta = 2 * (u - v).square().sum(1) / ((1 - u.square().sum(1)) * (1 - v.square().sum(1)))
    return torch.arccosh(1 + delta)


def crop_params(height: int, width: int, scale, ratio, gen: torch.Generator):
    """torchvision's `RandomResizedCrop.get_params`: (top, left, h, w) of a random box."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=gen).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    # The fallback: the whole image, clamped to the ratio range, centred.
    if width / height < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(x: torch.Tensor, top: int, left: int, h: int, w: int, size: int):
    """torchvision's `resized_crop` of an NCHW batch: crop, then antialiased bilinear."""
    x = x[:, :, top : top + h, left : left + w]
    return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False, antialias=True)


class TorchSide:
    """PPA's optimisation loop: eager PyTorch, one Python iteration per step over the batch."""

    def __init__(self, synthesis, target, w0: np.ndarray, cfg, frozen: bool, dev: torch.device):
        self.synthesis, self.target = synthesis.to(dev), target.to(dev)
        self.dev = dev
        if frozen:
            for module in (synthesis, target):
                module.requires_grad_(False)
        self.num_ws = synthesis.num_ws
        self.crop, self.scale, self.ratio = int(cfg.crop), cfg.crop_scale, cfg.crop_ratio
        self.clip = bool(cfg.clip_images)
        self.w = torch.from_numpy(w0[:, None].copy()).to(dev).requires_grad_(True)  # [n, 1, w]
        self.opt = torch.optim.Adam([self.w], lr=cfg.lr, betas=(cfg.b1, cfg.b2))
        self.labels = torch.full((len(w0),), LABEL, dtype=torch.long, device=dev)
        self.gen = torch.Generator().manual_seed(0)

    def transform(self, x: torch.Tensor, boxes: np.ndarray | None) -> torch.Tensor:
        """CenterCrop, Resize(224), RandomResizedCrop(224): one box for the batch (PPA), or
        `boxes` [n, 4], one per image."""
        x = (x + 1) / 2  # The library's [-1, 1] -> [0, 1].
        if self.clip:
            x = x.clamp(0, 1)
        side = x.shape[-1]
        top = int(round((side - self.crop) / 2.0))
        x = x[:, :, top : top + self.crop, top : top + self.crop]
        size = (TARGET_SIZE, TARGET_SIZE)
        x = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)
        if boxes is None:
            box = crop_params(TARGET_SIZE, TARGET_SIZE, self.scale, self.ratio, self.gen)
            return resized_crop(x, *box, TARGET_SIZE)
        crops = [resized_crop(x[i : i + 1], *b, TARGET_SIZE) for i, b in enumerate(boxes)]
        return torch.cat(crops)

    def run(self, boxes: np.ndarray | None = None) -> tuple[float, dict]:
        """One step; returns (seconds, {'iden': mean loss, 'conf': mean target confidence})."""
        tic = time.perf_counter()
        ws = torch.repeat_interleave(self.w, repeats=self.num_ws, dim=1)
        images = self.synthesis(ws, noise_mode='const')
        _, logits = self.target(self.transform(images, boxes))
        loss = poincare_loss(logits, self.labels).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        iden = loss.item()  # PPA reads the loss every step (and the confidences when logging)
        with torch.no_grad():
            conf = logits.softmax(1)[:, LABEL].mean().item()
        if self.dev.type == 'cuda':
            torch.cuda.synchronize(self.dev)
        return time.perf_counter() - tic, {'iden': iden, 'conf': conf}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--resolution', type=int, default=256, help='StyleGAN2 output side')
    p.add_argument('--batch', type=int, default=0, help='candidates per step (0: 4 CPU, 25 GPU)')
    p.add_argument('--steps', type=int, default=0, help='timed steps per side (0: 3 CPU, 10 GPU)')
    p.add_argument(
        '--width-divisor',
        type=int,
        default=1,
        help='divide every channel width of both networks by this (1: full size)',
    )
    p.add_argument('--quick', action='store_true', help='256 px, quarter widths, batch 2, 2 steps')
    p.add_argument(
        '--torch-frozen', action='store_true', help='PyTorch: requires_grad off for G and T'
    )
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='PyTorch')
    args = p.parse_args()
    dev = torch_device(args.device)
    gpu = dev.type == 'cuda' or jax.default_backend() == 'gpu'
    if args.quick:
        args.resolution, args.batch, args.steps = 256, 2, 2
        args.width_divisor = QUICK_DIVISOR
    args.batch = args.batch or (25 if gpu else 4)
    args.steps = args.steps or (10 if gpu else 3)
    if min(args.batch, args.steps) < 1:
        p.error('--batch and --steps must be >= 1')
    try:
        stylegan2.block_resolutions(args.resolution)
    except ValueError as e:
        p.error(f'--resolution: {e}')
    if args.resolution < 256:
        p.error('--resolution must be >= 256 (the 800/1024 centre crop, resized to 224)')
    div = args.width_divisor
    if div < 1 or any(w % div for w in (*FULL_WIDTH.values(), *RESNET_WIDTHS, RESNET_STEM)):
        p.error('--width-divisor must divide 64 (e.g. 1, 2, 4, 8)')
    width = {k: v // div for k, v in FULL_WIDTH.items()}
    resnet = dict(widths=tuple(w // div for w in RESNET_WIDTHS), stem_width=RESNET_STEM // div)

    prior = random_prior(args.resolution, **width)
    model = models.get_model(TARGET, CLASSES, **resnet)
    t_vars = random_target(model)
    ctx = common.AttackContext(
        prior=prior,
        target=classifiers.bind(model, t_vars),
        num_classes=CLASSES,
        image_size=TARGET_SIZE,
    )
    cfg = ppa_config(args.resolution, args.batch)
    g_ref = torch_sg2.Generator(
        prior.z_dim,
        prior.spec['w_dim'],
        args.resolution,
        prior.spec['mapping_layers'],
        prior.spec['layer_features'],
        conv_clamp=prior.spec['conv_clamp'],
        **width,
    )
    g_ref = load_into(
        g_ref, sg2_rules.rules(prior.generator), prior.variables['generator'], 'resample_filter'
    )
    t_ref = classifier_refs.TorchResNet(
        classifier_refs.TorchBottleneck,
        model.stage_blocks,
        resnet['widths'],
        resnet['stem_width'],
        CLASSES,
    )
    t_ref = load_into(
        t_ref, classifier_rules.torchvision_resnet(model), t_vars, 'num_batches_tracked'
    )
    jax_side = JaxSide(ctx, cfg, args.batch)
    torch_side = TorchSide(g_ref.synthesis, t_ref, jax_side.w0, cfg, args.torch_frozen, dev)

    print_machine(dev)
    g_params = prior.variables['generator']['params']
    synthesis_params = count(g_params['synthesis'])
    torch_counts = [sum(q.numel() for q in m.parameters()) for m in (t_ref, g_ref.synthesis)]
    print(
        f'models (random weights; parameters torch / jax): target {TARGET} {CLASSES} classes '
        f'{torch_counts[0]:,} / {count(t_vars["params"]):,}; StyleGAN2 synthesis '
        f'{args.resolution} px, channel_base {width["channel_base"]}, channel_max '
        f'{width["channel_max"]}: {torch_counts[1]:,} / {synthesis_params:,}; '
        + ('full widths' if div == 1 else f'every width of both divided by {div}')
    )
    print(
        f'attack: ppa, Adam lr={cfg.lr} betas=({cfg.b1}, {cfg.b2}), crop {cfg.crop} -> '
        f'{TARGET_SIZE}, RandomResizedCrop scale {tuple(cfg.crop_scale)} ratio '
        f'{tuple(cfg.crop_ratio)}, clip_images={cfg.clip_images}, reference_batch='
        f'{cfg.reference_batch}; batch={args.batch} (1 identity x {args.batch} candidates), '
        f'steps={args.steps}'
    )
    grads = 'off (--torch-frozen)' if args.torch_frozen else 'on (requires_grad left on)'
    print(f'pytorch: weight gradients of G and T {grads}')
    flops = jax_side.flops()

    # Warm-up and correctness: the same w, weights and crop boxes on both sides.
    boxes = jax_side.crop_boxes(cfg, 0)
    compile_s, jax_aux = jax_side.run()
    _, torch_aux = torch_side.run(boxes)
    print('\nloss at step 0 (mean Poincare loss over the batch; target confidence):')
    print(f'{"side":10} {"poincare":>14} {"confidence":>12}')
    for side, aux in (('jax', jax_aux), ('pytorch', torch_aux)):
        assert np.isfinite(aux['iden']), (side, aux)
        print(f'{side:10} {aux["iden"]:14.8f} {aux["conf"]:12.3e}')
    rel = abs(jax_aux['iden'] - torch_aux['iden']) / max(abs(torch_aux['iden']), 1e-12)
    print(
        f'relative difference: {rel:.2e} (same weights, w and crop boxes: float32 rounding, '
        'and the crop edges)'
    )
    # Adam's first step is lr * g / (|g| + eps), about lr * sign(g): a component whose
    # gradient is near zero on both sides may step either way, so compare the directions.
    step_jax = np.asarray(jax_side.latent)[0] - jax_side.w0
    step_torch = torch_side.w.detach().cpu().numpy()[:, 0] - jax_side.w0
    same = float(np.mean(np.sign(step_jax) == np.sign(step_torch)))
    latent_diff = float(np.abs(step_jax - step_torch).max())
    print(
        f'w after step 0: {same:.2%} of the components stepped the same way (each step is '
        f'about +-lr = {cfg.lr}; the others have near-zero gradients); max |w_jax - w_torch| '
        f'= {latent_diff:.2e}'
    )

    sides = {'jax': jax_side, 'pytorch': torch_side}
    times = alternate(sides, args.steps, 's/step')  # Alternating step by step.
    medians, ratio = report_medians(times, flops, digits=1)
    print(
        f'jax compile: {compile_s:.1f} s (first call of the step, one step included; minus '
        f'the median step: {compile_s - medians["jax"]:.1f} s)'
    )
    memory = peak_memory(dev)
    print(f'peak RSS of the process: {memory["peak_rss_mb"]:.0f} MiB (batch {args.batch})')
    for side, key in (('jax', 'jax_device_peak_mb'), ('pytorch', 'torch_device_peak_mb')):
        if key in memory:
            print(f'peak device memory, {side}: {memory[key]:.0f} MiB (batch {args.batch})')
    result = {
        'name': 'ppa_attack',
        'target': TARGET,
        'classes': CLASSES,
        'resolution': args.resolution,
        'width_divisor': div,
        'batch': args.batch,
        'steps': args.steps,
        'torch_frozen': args.torch_frozen,
        **timing_result(args.quick, dev, medians, ratio, compile_s, flops, memory),
        'loss_step': 0,
        'loss_rel_diff': rel,
        'step_sign_agreement': same,
    }
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
