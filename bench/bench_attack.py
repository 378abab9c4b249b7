r"""One attack step (GMI, KEDMI, PLG-MI, LOMMA): tldmi_jax (jit) vs the originals' PyTorch loops.

  PYTHONPATH=. python bench/bench_attack.py [--attack=gmi] [--target=facenet64]
      [--identities=60] [--seeds=1] [--reps=5] [--k=1] [--seed-chunk=0] [--lomma-base=gmi]
      [--quick] [--torch-frozen] [--device=auto]

Both sides attack the same full-size models with random weights at 64 px, 1000 classes: the
target, FaceNet64 (IR-50 at 64 px) or TL-DMI's VGG16, and the attack's prior:

- `gmi`: the GMI prior (DCGAN generator, 5,142,083 parameters, and WGAN-GP critic,
  4,316,545); loss -D(G(z)) + lam CE, Nesterov momentum on z, clamp.
- `kedmi`: the KEDMI prior (the same DCGAN generator and the minibatch discriminator,
  18,888,936); a Gaussian (mu, log sigma^2) per identity, one reparameterised sample per
  identity and step, loss softplus(lse(D)) - lse(D) + lam CE, Adam. The 5 samples per
  identity are drawn from the learned Gaussian after the search (not part of a step).
- `plgmi`: the PLG-MI prior (conditional ResNet generator, 17,973,379, and SN projection
  discriminator, 11,165,441; the attack step does not use D, as in the original); z ~ N(0, I)
  (dim 128), the generator conditioned on the identity, the max-margin loss on two randomly
  augmented views (crop, flip, brightness/contrast jitter, rotation), Adam.
- `lomma`: LOMMA (variant `ours`) on the `--lomma-base` attack (gmi or kedmi): the logit
  loss averaged over the target and three augmented students, plus reg_weight times
  mean((f_T(x) - p_reg)^2) on the target. The students are what the library distils
  (`configs/distill_celeba.py`): EfficientNet-B0/B1/B2 (5,288,548 / 7,794,184 / 9,109,994
  parameters with 1000 classes); p_reg is a random vector of the target's feature size.

The PyTorch reference modules of tests/interop (`TorchDCGANGenerator`, `TorchDGWGAN`,
`TorchMinibatchDiscriminator`, `TorchResNetGenerator`, `TorchSNProjectionDiscriminator`,
`TorchIR64` / `TorchVGG16`, all at their full sizes) get random weights, and the library's
converters turn them into the JAX prior and target. The library has no EfficientNet
converter, so the students go the other way: random Flax variables, copied into a PyTorch
EfficientNet written here in torchvision's layout. Both sides start from the same weights,
the same initial latents and the same labels.

- JAX: `<attack>.make_problem` run by `latent_search.LatentSearch`, built as
  `tldmi_jax/attacks/runner.py` builds them, with the hyperparameters of
  `config_lib.attack_config(attack)` (lomma: `attack_config('<base>+lomma')`): the
  [identities, seeds] instances vmapped, a jitted `lax.scan` over a chunk of k steps
  (`LatentSearch.advance`: on CPU a Python loop over one jitted step, elsewhere one jitted
  `lax.scan` of the k steps), the seeds in the chunks the attacks use
  (`LatentSearch.chunk_size`; on CPU at most 64 instances per call, `--seed-chunk`
  overrides). One step = the time of k steps / k.
- PyTorch: the loop of the original inversion (TL-DMI `attack.py:inversion` for GMI,
  `dist_inversion` for KEDMI, LOMMA's `iden_loss` on either, PLG-MI's `reconstruct.py`):
  eager, one Python iteration per update, the identities of a batch together, the seeds one
  after another, the losses read with `.item()` every update; all models in eval mode.
  As in the originals, the models' parameters keep `requires_grad`, so every backward also
  computes (and accumulates) their weight gradients; `--torch-frozen` turns that off (a
  leaner loop than the originals'). KEDMI's discriminator sees the whole batch (its
  minibatch discrimination couples the identities, as in the original); PLG-MI's
  augmentation is the library's transform family written with `grid_sample` (Kornia is not
  a dependency). One step = one update of every seed.

KEDMI's z is clamped inside the graph on both sides, as the library and the transcription
of tests/interop/test_attack_parity.py do.

The loss check: the warm-up (JAX: the compile) runs the same k steps on both sides, the
PyTorch side replaying the JAX side's random draws (KEDMI's eps, PLG-MI's augmentation
parameters) and, for KEDMI, scoring each sample alone as the library does; the timed reps
then draw their own with torch, KEDMI's D on the whole batch (the printed 'prior with D on
the batch' shows how far the original's coupled prior is from the per-sample one at the
checked step). The latents after the warm-up are compared too: always for the Adam attacks
(KEDMI, PLG-MI; Adam almost cancels the loss scale, the batch mean in the originals and
1 / reference_batch here), for GMI only when identities = reference_batch (60). Adam's
first step is about lr * sign(g), so a component with a near-zero gradient may move by up
to lr on one side and not the other: for the Adam attacks the fraction of latent components
whose step directions agree is printed too (`step_sign_agreement`). After the
warm-up the two sides alternate rep by rep. Prints the machine,
the loss of both sides at the warm-up's last step (the same point when k = 1) and their
relative difference, the median, min and max seconds per step of each side, the ratio
PyTorch / JAX (> 1 means tldmi_jax is faster), the JAX compile time, the FLOPs of one step
(XLA's cost analysis of the JAX chunk, used for the achieved FLOP/s of both sides), the
process's peak RSS (on a GPU also each side's peak device memory) and the script's wall
time. `--quick`: 8 identities, 1 seed, 3 reps (the full architectures). `--device`: where
the PyTorch side runs (auto: CUDA when available); JAX runs on its default backend. The
last stdout line is `BENCH_RESULT {json}` (read by bench/run_all.py; `name` is
`<attack>_attack`; the rows other than gmi also carry `attack`, the library's name such as
`gmi+lomma`, `script_wall_s` and, for KEDMI, `prior_batch_d`). Needs torch
(`pip install -r requirements-test.txt`) and the repository root on the path (the PyTorch
modules are imported from tests/interop).
"""

import time

_START = time.perf_counter()  # The script's wall time counts from here (imports included).

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

try:
    import torch
except ImportError:
    sys.exit('bench_attack.py needs torch: pip install -r requirements-test.txt')

from bench.bench_common import (  # noqa: E402
    alternate,
    augment,
    count,
    cpu_model,
    max_margin_loss,
    peak_memory,
    report_medians,
    step_flops,
    timing_result,
    torch_device,
)
from tests.interop import test_convert as classifier_refs  # noqa: E402
from tests.interop import test_convert_gans as gan_refs  # noqa: E402
from tests.interop.test_attack_parity import he_init  # noqa: E402
from tldmi_jax import attacks, classifiers, config_lib, models, priors  # noqa: E402
from tldmi_jax.attacks import common, latent_search  # noqa: E402
from tldmi_jax.interop import convert, gan_priors  # noqa: E402
from tldmi_jax.models import efficientnet  # noqa: E402
from tldmi_jax.utils import distributed, sharding  # noqa: E402

F = torch.nn.functional
tnn = torch.nn

CLASSES = 1000
TARGETS = ('facenet64', 'vgg16')  # `convert.KINDS` names, which are also the JAX archs.
ATTACKS = ('gmi', 'kedmi', 'plgmi', 'lomma')
STUDENTS = ('efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2')  # configs/distill_celeba


# ---------------------------------------------------------------------------------------
# Models: PyTorch references with random weights, converted into the JAX context.


def torch_target(target: str) -> tnn.Module:
    """The full-size PyTorch target with random weights, in eval mode."""
    return classifier_refs.randomise(classifier_refs.FULL_SIZE[target](), seed=3)


def torch_prior(kind: str) -> tuple[tnn.Module, tnn.Module]:
    """The full-size PyTorch G and D of a prior kind with random weights, in eval mode.

    The generators get He-normal weights (as in tests/interop/test_attack_parity.py) so that
    their images vary with z (PLG-MI's last conv scaled by 0.2, so that its tanh does not
    saturate); norm affines, running statistics and class embeddings are moved away from
    their defaults (`randomise`).
    """
    if kind == 'plgmi':
        g = gan_refs.TorchResNetGenerator(CLASSES)
        d = gan_refs.TorchSNProjectionDiscriminator(CLASSES)
    else:
        g = gan_refs.TorchDCGANGenerator()
        d = (
            gan_refs.TorchMinibatchDiscriminator(CLASSES)
            if kind == 'kedmi'
            else gan_refs.TorchDGWGAN()
        )
    g = gan_refs.randomise(he_init(g, seed=1), seed=1)
    if kind == 'plgmi':  # He-normal saturates 3/4 of the tanh outputs; a smaller last conv
        with torch.no_grad():  # keeps the gradient flowing to z, as in a trained G.
            g.conv6.weight.mul_(0.2)
    return g, gan_refs.randomise(d, seed=2)


def torch_models(target: str):
    """Full-size PyTorch G, D (the GMI prior) and T with random weights, in eval mode."""
    torch.manual_seed(0)
    g, d = torch_prior('gmi')
    return g, d, torch_target(target)


def jax_prior(kind: str, g: tnn.Module, d: tnn.Module) -> priors.Prior:
    """The prior of the same weights, converted by the library's converter."""
    prior, _ = gan_priors.convert_prior_state(
        kind, classifier_refs.numpy_state(g), classifier_refs.numpy_state(d)
    )
    _, _, full_spec = priors.build_modules(kind, num_classes=prior.num_classes, image_size=64)
    widths = {k: v for k, v in full_spec.items() if k != 'out_act'}  # plgmi: tanh converted
    assert {k: prior.spec[k] for k in widths} == widths, (prior.spec, full_spec)  # not tiny
    prior.variables = jax.device_put(prior.variables)  # as `priors.load_prior` does
    return prior


def jax_target(target: str, t: tnn.Module) -> tuple[classifiers.BoundFn, int]:
    """The target of the same weights (the library's converter) and its parameter count."""
    conv = convert.convert_state_dict(target, classifier_refs.numpy_state(t))
    assert conv.num_classes == CLASSES and conv.image_size == 64, conv.report
    assert not conv.report['left_fresh'], conv.report
    return classifiers.bind(conv.model, jax.device_put(conv.variables)), count(conv.params)


def jax_context(g, d, t, target: str) -> tuple[common.AttackContext, int]:
    """The GMI attack context of the same weights and the target's parameter count."""
    target_fn, params = jax_target(target, t)
    ctx = common.AttackContext(
        prior=jax_prior('gmi', g, d), target=target_fn, num_classes=CLASSES, image_size=64
    )
    return ctx, params


class TorchConvBNAct(tnn.Module):
    """torchvision's `Conv2dNormActivation`: conv (no bias) -> BN -> SiLU (optional)."""

    def __init__(self, cin, cout, kernel=1, stride=1, groups=1, act=True):
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv = tnn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        self.bn = tnn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.silu(x) if self.act else x


class TorchSqueezeExcitation(tnn.Module):
    def __init__(self, width: int, squeeze: int):
        super().__init__()
        self.fc1 = tnn.Conv2d(width, squeeze, 1)
        self.fc2 = tnn.Conv2d(squeeze, width, 1)

    def forward(self, x):
        s = self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(s)


class TorchMBConv(tnn.Module):
    """torchvision's MBConv (eval: no stochastic depth); children `block_{b}`."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        expanded = efficientnet.make_divisible(cin * expand)
        layers = [TorchConvBNAct(cin, expanded)] if expanded != cin else []
        layers += [
            TorchConvBNAct(expanded, expanded, kernel, stride, groups=expanded),
            TorchSqueezeExcitation(expanded, max(1, cin // 4)),
            TorchConvBNAct(expanded, cout, act=False),
        ]
        for b, layer in enumerate(layers):
            self.add_module(f'block_{b}', layer)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        for layer in self.children():
            y = layer(y)
        return y + x if self.residual else y


class TorchEfficientNet(tnn.Module):
    """LOMMA's EfficientNet (torchvision's features + avgpool, a fresh `Linear`), returning
    `(features, logits)`; modules named as the Flax model's (`features_{s}_{j}`, `fc`)."""

    def __init__(self, flax_model: efficientnet.EfficientNet):
        super().__init__()
        width = flax_model._width
        cin = width(efficientnet._STAGES[0][3])
        self.features_0 = TorchConvBNAct(3, cin, 3, 2)
        self.names = ['features_0']
        for s, ((expand, kernel, stride, _, out, _), depth) in enumerate(
            zip(efficientnet._STAGES, flax_model.depths, strict=True), start=1
        ):
            for j in range(depth):
                name = f'features_{s}_{j}'
                block = TorchMBConv(cin, width(out), expand, kernel, stride if j == 0 else 1)
                self.add_module(name, block)
                self.names.append(name)
                cin = width(out)
        self.features_8 = TorchConvBNAct(cin, flax_model.feat_dim)
        self.names.append('features_8')
        self.fc = tnn.Linear(flax_model.feat_dim, flax_model.num_classes)

    def forward(self, x):
        for name in self.names:
            x = getattr(self, name)(x)
        features = x.mean(dim=(2, 3))
        return features, self.fc(features)


def random_flax_variables(model, seed: int, size: int = 64) -> dict:
    """Random variables of a classifier `model` at `size` px without running its init (no
    compile): conv kernels He-normal over fan-out (torchvision's init), dense kernels
    uniform, biases normal, BN affines and running statistics away from their defaults."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in traverse_util.flatten_dict(shapes, sep='/').items():
        shape, name = leaf.shape, path.rsplit('/', 1)[-1]
        if name == 'kernel' and len(shape) == 4:
            value = rng.normal(size=shape) * np.sqrt(2.0 / (shape[0] * shape[1] * shape[3]))
        elif name == 'kernel':
            value = rng.uniform(-1, 1, size=shape) / np.sqrt(shape[0])
        elif name == 'scale' or (name == 'var' and path.startswith('batch_stats')):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:  # biases, running means
            value = 0.1 * rng.normal(size=shape)
        flat[path] = np.asarray(value, np.float32)
    return traverse_util.unflatten_dict(flat, sep='/')


def torch_from_flax(module: tnn.Module, variables: dict) -> tnn.Module:
    """Copies Flax `variables` into `module` whose submodule names are the Flax paths."""
    params = traverse_util.flatten_dict(variables['params'], sep='/')
    stats = traverse_util.flatten_dict(variables['batch_stats'], sep='/')
    state = {}
    for key, tensor in module.state_dict().items():
        path, leaf = key.rsplit('.', 1)
        owner, flax_path = module.get_submodule(path), path.replace('.', '/')
        if leaf == 'num_batches_tracked':
            continue
        if isinstance(owner, tnn.BatchNorm2d):
            names = {
                'weight': 'scale',
                'bias': 'bias',
                'running_mean': 'mean',
                'running_var': 'var',
            }
            tree = stats if leaf.startswith('running') else params
            value = tree[f'{flax_path}/{names[leaf]}']
        elif leaf == 'bias':
            value = params[f'{flax_path}/bias']
        elif isinstance(owner, tnn.Conv2d):
            value = params[f'{flax_path}/kernel'].transpose(3, 2, 0, 1)  # HWIO -> OIHW
        else:
            value = params[f'{flax_path}/kernel'].T  # Dense [in, out] -> Linear [out, in]
        assert value.shape == tuple(tensor.shape), (key, value.shape, tensor.shape)
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    used = {k for k in state}
    assert len(used) == len(params) + len(stats), 'Flax variables left over'
    module.load_state_dict(state, strict=False)
    return module.eval()


def students() -> tuple[list[classifiers.BoundFn], list[tnn.Module], list[int]]:
    """LOMMA's three students (EfficientNet-B0/B1/B2, 1000 classes, random weights): the JAX
    functions, the PyTorch copies and the parameter counts."""
    fns, refs, counts = [], [], []
    for i, arch in enumerate(STUDENTS):
        model = models.get_model(arch, CLASSES)
        variables = random_flax_variables(model, seed=20 + i)
        refs.append(torch_from_flax(TorchEfficientNet(model), variables))
        fns.append(classifiers.bind(model, jax.device_put(variables)))
        counts.append(count(variables['params']))
    return fns, refs, counts


# ---------------------------------------------------------------------------------------
# The JAX side.


class JaxSide:
    """The library's loop: `LatentSearch.advance` on [identities, seeds] instances.

    The seeds run in chunks of `LatentSearch.chunk_size` (`seed_chunk`, 0: the automatic
    choice the attacks make), one `advance` per chunk, as `LatentSearch.run_batch` runs
    them (there the chunks run one after another over all steps; the time per step of
    every instance is the same)."""

    def __init__(
        self, problem, identities: int, seeds: int, k: int, devices: int = 0, seed_chunk: int = 0
    ):
        self.search = latent_search.LatentSearch(
            problem,
            num_seeds=seeds,
            key=jax.random.fold_in(jax.random.key(0), 7),  # runner: config.seed = 0
            checkpoint_every=k,
            devices=devices,  # runner: config.devices (0: all)
            seed_chunk=seed_chunk,
        )
        self.k = k
        # As `LatentSearch.run_batch`: identities sharded over a 1-D mesh of the devices.
        mesh = sharding.data_mesh(identities, self.search.devices)
        self.mesh_size = mesh.size  # The largest device count that divides the identities.
        self.shard = NamedSharding(mesh, PartitionSpec('data'))
        self.ids = jax.device_put(np.arange(identities, dtype=np.int32), self.shard)
        self.seeds = sharding.replicate(np.arange(seeds, dtype=np.int32), mesh)
        latent, opt_state = self.search._init(self.ids, self.seeds, None)
        # [B, S, ...]; GMI: unclamped N(0, I). Whole in every process (bench_scaling's (c)).
        self.z0 = distributed.to_host(latent)
        size = self.seed_chunk = self.search.chunk_size(identities, mesh.size)
        self.chunks = []  # (seeds, latent, opt_state) of each seed chunk.
        for first in range(0, seeds, size):
            part = slice(first, min(first + size, seeds))
            chunk = sharding.replicate(np.arange(seeds, dtype=np.int32)[part], mesh)
            sub = jax.tree.map(lambda a, p=part: jax.device_put(a[:, p], self.shard), latent)
            opt = jax.tree.map(lambda a, p=part: jax.device_put(a[:, p], self.shard), opt_state)
            self.chunks.append([chunk, sub, opt])
        self.step = 0

    @property
    def latent(self):
        """[B, S, ...]: the chunks' latents side by side."""
        parts = [c[1] for c in self.chunks]
        return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *parts)

    def run(self) -> tuple[float, dict]:
        """One chunk of k steps of every seed chunk; returns (seconds, aux of the last)."""
        tic = time.perf_counter()
        auxes = []
        for chunk in self.chunks:
            chunk[1], chunk[2], aux = self.search.advance(
                chunk[1], chunk[2], self.ids, chunk[0], self.step, self.k, self.shard
            )
            auxes.append(aux)
        jax.block_until_ready(([c[1:] for c in self.chunks], auxes))
        seconds = time.perf_counter() - tic
        self.step += self.k
        # Each chunk's aux is a mean over its instances: weight by the chunk's seeds.
        sizes = np.array([len(c[0]) for c in self.chunks], np.float64)
        return seconds, {
            name: float(np.dot(sizes, [float(a[name]) for a in auxes]) / sizes.sum())
            for name in auxes[0]
        }

    def flops(self) -> float | None:
        """FLOPs of one step (XLA's cost analysis of the step; lowering, no compile)."""
        seeds, latent, opt_state = self.chunks[0]
        flops = step_flops(self.search.lower_step(latent, opt_state, self.ids, seeds, self.step))
        # Every instance costs the same: scale the first chunk's FLOPs to all seeds.
        return None if flops is None else flops * len(self.seeds) / len(seeds)

    def draws(self, t: int, draw) -> np.ndarray:
        """`draw(step_key)` for every instance at step t: [B, S, ...], the random numbers
        the problem's loss draws from the key `LatentSearch._update` gives it."""
        keys = self.search._keys(self.ids, self.seeds)

        def one(key):
            return draw(jax.random.fold_in(latent_search._purpose_keys(key)[1], t))

        return np.asarray(jax.vmap(jax.vmap(one))(keys))


# ---------------------------------------------------------------------------------------
# The PyTorch side: the originals' loops.


IDENTITY_LOSSES = {'ce': F.cross_entropy, 'logit': F.nll_loss, 'margin': max_margin_loss}


class TorchIdentity:
    """The originals' identity term of a batch: `cfg.iden_loss` on the target's logits
    (CE; LOMMA's logit loss, `NLLLoss` on raw logits; PLG-MI's max margin), averaged with
    the students' when `use_augmented`, plus reg_weight * mean((f_T(x) - p_reg)^2)."""

    def __init__(self, t, cfg, labels, students=(), p_reg=None):
        self.t, self.students, self.labels = t, list(students), labels
        self.fn = IDENTITY_LOSSES[cfg.iden_loss]
        self.use_augmented = bool(cfg.get('use_augmented'))
        self.reg_weight = float(cfg.get('reg_weight') or 0.0)
        self.p_reg = p_reg

    def __call__(self, fake) -> tuple[torch.Tensor, dict]:
        feat, out = self.t(fake)
        loss = self.fn(out, self.labels)
        if self.use_augmented:
            for student in self.students:
                loss = loss + self.fn(student(fake)[1], self.labels)
            loss = loss / (1 + len(self.students))
        aux = {'iden': loss}
        if self.reg_weight:
            reg = torch.mean((feat - self.p_reg) ** 2)
            loss = loss + self.reg_weight * reg
            aux['reg'] = reg
        return loss, aux


class TorchLoop:
    """The originals' loop: the seeds one after another, k updates each."""

    def __init__(self, seeds: int, k: int, dev: torch.device):
        self.seeds, self.k, self.dev = seeds, k, dev
        self.t = [0] * seeds  # Steps done per seed.
        self.replay = {}  # (seed, step, what) -> a draw of the JAX side to use instead.

    def draw(self, s: int, what: str, shape, fn) -> torch.Tensor:
        """A random tensor: the JAX side's draw during the warm-up, else `fn` (torch)."""
        replayed = self.replay.pop((s, self.t[s], what), None)
        return replayed if replayed is not None else fn(shape, device=self.dev)

    def run(self) -> tuple[float, dict]:
        """k updates of every seed; returns (seconds, the mean over seeds of each loss of
        the last update)."""
        last = []
        tic = time.perf_counter()
        for s in range(self.seeds):
            for _ in range(self.k):
                aux = self.update(s)
                self.t[s] += 1
            last.append(aux)
        if self.dev.type == 'cuda':
            torch.cuda.synchronize(self.dev)
        seconds = time.perf_counter() - tic
        return seconds, {key: float(np.mean([a[key] for a in last])) for key in last[0]}


class TorchGMI(TorchLoop):
    """TL-DMI `attack.py:inversion`: z, Nesterov-style momentum by hand, clamp."""

    def __init__(self, g, d, identity, z0: np.ndarray, cfg, k, dev):
        super().__init__(z0.shape[1], k, dev)
        self.g, self.d, self.identity = g, d, identity
        self.lr, self.momentum, self.lam, self.clip = cfg.lr, cfg.momentum, cfg.lam, cfg.clip
        identities, seeds, z_dim = z0.shape
        # Each seed starts from the JAX side's initial latents (the original: torch.randn).
        self.z = [
            torch.from_numpy(z0[:, s].copy()).to(dev).requires_grad_(True) for s in range(seeds)
        ]
        self.v = [torch.zeros(identities, z_dim, device=dev) for _ in range(seeds)]

    def update(self, s: int) -> dict:
        z, v = self.z[s], self.v[s]
        fake = self.g(z)
        label = self.d(fake)
        if z.grad is not None:
            z.grad.zero_()
        prior_loss = -label.mean()
        iden_loss, aux = self.identity(fake)
        total = prior_loss + self.lam * iden_loss
        total.backward()
        v_prev = v.clone()
        v = self.momentum * v - self.lr * z.grad
        z = z + (-self.momentum * v_prev + (1 + self.momentum) * v)
        self.z[s] = torch.clamp(z.detach(), -self.clip, self.clip).requires_grad_(True)
        self.v[s] = v
        # The original reads every loss every iteration.
        return {'prior': prior_loss.item(), **{key: x.item() for key, x in aux.items()}}

    def latents(self) -> np.ndarray:
        return np.stack([z.detach().cpu().numpy() for z in self.z], axis=1)


class TorchKEDMI(TorchLoop):
    """TL-DMI `attack.py:dist_inversion`: (mu, log_var) per identity, one reparameterised
    z per identity and update, clamped; KEDMI's prior on D of the batch; Adam."""

    def __init__(self, g, d, identity, z0: dict, cfg, k, dev):
        super().__init__(z0['mu'].shape[1], k, dev)
        self.g, self.d, self.identity = g, d, identity
        self.lam, self.clip = cfg.lam, cfg.clip
        self.per_instance = False  # D on each sample alone (the library; the loss check)
        self.params, self.opts = [], []
        for s in range(self.seeds):
            pair = [
                torch.from_numpy(z0[name][:, s].copy()).to(dev).requires_grad_(True)
                for name in ('mu', 'log_var')
            ]
            self.params.append(pair)
            self.opts.append(torch.optim.Adam(pair, lr=cfg.lr))

    @staticmethod
    def prior(logits):
        lse = torch.logsumexp(logits, dim=1)
        return torch.mean(F.softplus(lse)) - torch.mean(lse)

    def update(self, s: int) -> dict:
        mu, log_var = self.params[s]
        eps = self.draw(s, 'eps', mu.shape, torch.randn)
        z = torch.clamp(mu + torch.exp(0.5 * log_var) * eps, -self.clip, self.clip)
        fake = self.g(z)
        if self.per_instance:
            logits = torch.cat([self.d(fake[i : i + 1])[1] for i in range(len(fake))])
        else:
            _, logits = self.d(fake)
        for p in (mu, log_var):
            if p.grad is not None:
                p.grad.zero_()
        prior_loss = self.prior(logits)
        iden_loss, aux = self.identity(fake)
        total = prior_loss + self.lam * iden_loss
        total.backward()
        self.opts[s].step()
        out = {'prior': prior_loss.item(), **{key: x.item() for key, x in aux.items()}}
        if self.per_instance:  # Untimed: the original's coupled prior at the same point.
            with torch.no_grad():
                out['prior_batch_d'] = self.prior(self.d(fake)[1]).item()
        return out

    def latents(self) -> dict:
        return {
            name: np.stack([p[i].detach().cpu().numpy() for p in self.params], axis=1)
            for i, name in enumerate(('mu', 'log_var'))
        }


class TorchPLGMI(TorchLoop):
    """PLG-MI `reconstruct.py:inversion`: z per identity, G(z, y), the max-margin loss on
    `views` augmented views, Adam."""

    def __init__(self, g, identity, z0: np.ndarray, cfg, k, dev):
        super().__init__(z0.shape[1], k, dev)
        self.g, self.identity, self.views = g, identity, cfg.views
        self.z, self.opts = [], []
        for s in range(self.seeds):
            z = torch.from_numpy(z0[:, s].copy()).to(dev).requires_grad_(True)
            self.z.append(z)
            self.opts.append(torch.optim.Adam([z], lr=cfg.lr))

    def update(self, s: int) -> dict:
        z = self.z[s]
        fake = self.g(z, self.identity.labels)
        total = 0.0
        for view in range(self.views):
            u = self.draw(s, f'u{view}', (len(z), 8), torch.rand)
            total = total + self.identity(augment(fake, u))[0]
        self.opts[s].zero_grad()
        total.backward()
        self.opts[s].step()
        return {'iden': total.item()}

    def latents(self) -> np.ndarray:
        return np.stack([z.detach().cpu().numpy() for z in self.z], axis=1)


# ---------------------------------------------------------------------------------------
# Setup and the run.


def attack_cfg(attack: str, base: str) -> tuple[str, ml_collections.ConfigDict]:
    """(the library's attack name, its hyperparameters from `config_lib.attack_config`)."""
    name = f'{base}+lomma' if attack == 'lomma' else attack
    return name, attacks.hyperparameters(config_lib.attack_config(name).attack)


def setup(args, dev: torch.device) -> dict:
    """Both sides of `args.attack` on the same weights, latents and labels."""
    name, cfg = attack_cfg(args.attack, args.lomma_base)
    spec = attacks.resolve(config_lib.attack_config(name).attack)
    kind = spec.module.PRIOR_KIND
    torch.manual_seed(0)
    g, d = torch_prior(kind)
    t = torch_target(args.target)
    target_fn, target_params = jax_target(args.target, t)
    prior = jax_prior(kind, g, d)  # converted before the modules move to `dev`
    n_torch = lambda m: sum(q.numel() for q in m.parameters())
    n_jax = lambda half: count(prior.variables[half]['params'])
    counts = [
        (f'target {args.target}', n_torch(t), target_params),
        (f'{kind} generator', n_torch(g), n_jax('generator')),
        (f'{kind} discriminator', n_torch(d), n_jax('discriminator')),
    ]
    student_fns, student_refs, p_reg = [], [], None
    if cfg.get('use_augmented'):
        student_fns, student_refs, student_counts = students()
        for arch, ref, n in zip(STUDENTS, student_refs, student_counts, strict=True):
            counts.append((f'student {arch}', sum(q.numel() for q in ref.parameters()), n))
    if cfg.get('reg_weight'):
        feat = jax.eval_shape(target_fn, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))[0]
        p_reg = np.random.default_rng(5).normal(size=feat.shape[1:]).astype(np.float32)
    ctx = common.AttackContext(
        prior=prior,
        target=target_fn,
        augmented=tuple(student_fns),
        num_classes=CLASSES,
        image_size=64,
        p_reg=None if p_reg is None else jax.device_put(p_reg),
    )
    jax_side = JaxSide(
        spec.module.make_problem(ctx, cfg),
        args.identities,
        args.seeds,
        args.k,
        seed_chunk=args.seed_chunk,
    )

    modules = [g, d, t, *student_refs]
    for m in modules:
        m.to(dev)
        if args.torch_frozen:
            m.requires_grad_(False)
    labels = torch.arange(args.identities, dtype=torch.long, device=dev)
    p_reg_t = None if p_reg is None else torch.from_numpy(p_reg).to(dev)
    identity = TorchIdentity(t, cfg, labels, student_refs, p_reg_t)
    z0 = jax_side.z0
    if kind == 'gmi':
        torch_side = TorchGMI(g, d, identity, z0, cfg, args.k, dev)
    elif kind == 'kedmi':
        torch_side = TorchKEDMI(g, d, identity, z0, cfg, args.k, dev)
        z_dim = prior.z_dim
        for step in range(args.k):  # The warm-up's eps: the JAX side's.
            eps = jax_side.draws(step, lambda key: jax.random.normal(key, (1, z_dim))[0])
            eps = torch.from_numpy(eps).to(dev)
            for s in range(args.seeds):
                torch_side.replay[(s, step, 'eps')] = eps[:, s].contiguous()
    else:
        torch_side = TorchPLGMI(g, identity, z0, cfg, args.k, dev)
        views = cfg.views
        for step in range(args.k):  # The warm-up's augmentations: the JAX side's.
            for view in range(views):

                def draw(key, view=view):
                    return jax.random.uniform(jax.random.split(key, views)[view], (1, 8))[0]

                u = torch.from_numpy(jax_side.draws(step, draw)).to(dev)
                for s in range(args.seeds):
                    torch_side.replay[(s, step, f'u{view}')] = u[:, s].contiguous()
    return dict(name=name, kind=kind, cfg=cfg, jax=jax_side, torch=torch_side, counts=counts)


def total_loss(aux: dict, cfg) -> float:
    """The loss of the originals' update (mean over identities): prior + lam * (iden +
    reg_weight * reg) for GMI/KEDMI/LOMMA, the summed views' max margin for PLG-MI."""
    if 'prior' not in aux:
        return aux['iden']
    iden = aux['iden'] + float(cfg.get('reg_weight') or 0.0) * aux.get('reg', 0.0)
    return aux['prior'] + cfg.lam * iden


def describe(attack: str, kind: str, cfg) -> str:
    """The hyperparameters line."""
    keys = {
        'gmi': ('lr', 'momentum', 'lam', 'clip', 'reference_batch'),
        'kedmi': ('lr', 'lam', 'clip', 'init_log_var', 'samples', 'reference_batch'),
        'plgmi': ('lr', 'iden_loss', 'views', 'reference_batch'),
    }[kind]
    if attack == 'lomma':
        keys += ('variant', 'iden_loss', 'use_augmented', 'reg_weight')
    return ' '.join(f'{key}={cfg.get(key)}' for key in keys)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--attack', default='gmi', choices=ATTACKS)
    p.add_argument('--lomma-base', default='gmi', choices=['gmi', 'kedmi'], help='lomma only')
    p.add_argument('--target', default='facenet64', choices=TARGETS)
    p.add_argument('--identities', type=int, default=60)
    p.add_argument('--seeds', type=int, default=1)
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--k', type=int, default=1, help='steps per jitted chunk (JAX)')
    p.add_argument(
        '--seed-chunk',
        type=int,
        default=0,
        help='JAX: seeds optimised at once, one call each (LatentSearch seed_chunk; 0: automatic)',
    )
    p.add_argument('--quick', action='store_true', help='identities 8, seeds 1, reps 3')
    p.add_argument(
        '--torch-frozen',
        action='store_true',
        help='PyTorch: requires_grad off for every model (the originals leave it on)',
    )
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='PyTorch')
    args = p.parse_args()
    if args.quick:
        args.identities, args.seeds, args.reps = 8, 1, 3
    if min(args.identities, args.seeds, args.reps, args.k) < 1:
        p.error('--identities, --seeds, --reps and --k must be >= 1')
    if args.seed_chunk < 0:
        p.error('--seed-chunk must be >= 0 (0: all seeds at once)')
    if args.identities > CLASSES:
        p.error(f'--identities must be <= {CLASSES}')

    dev = torch_device(args.device)
    parts = setup(args, dev)
    cfg, kind, jax_side, torch_side = parts['cfg'], parts['kind'], parts['jax'], parts['torch']
    label = parts['name']

    print(f'machine: {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)')
    print(
        f'versions: jax {jax.__version__} (jaxlib {importlib.metadata.version("jaxlib")}), '
        f'torch {torch.__version__}, python {platform.python_version()}'
    )
    print(f'jax devices: {jax.devices()}')
    print(f'torch device: {dev}; threads: {torch.get_num_threads()} (PyTorch default, not set)')
    print(f'jax compilation cache: {jax.config.jax_compilation_cache_dir or "off"}')
    if args.attack == 'gmi':
        (_, t_torch, t_jax), (_, g_torch, g_jax), (_, d_torch, d_jax) = parts['counts']
        print(
            f'models (full size, random weights; parameters torch / jax): target {args.target} '
            f'{t_torch:,} / {t_jax:,}, GMI generator {g_torch:,} / {g_jax:,}, critic '
            f'{d_torch:,} / {d_jax:,}; {CLASSES} classes, 64x64x3'
        )
    else:
        listed = ', '.join(f'{what} {a:,} / {b:,}' for what, a, b in parts['counts'])
        print(
            f'models (full size, random weights; parameters torch / jax): {listed}; '
            f'{CLASSES} classes, 64x64x3'
        )
    print(
        f'attack: {label}, {describe(args.attack, kind, cfg)}; identities={args.identities} '
        f'seeds={args.seeds} seed_chunk={jax_side.seed_chunk} k={args.k} reps={args.reps}'
    )
    grads = 'off (--torch-frozen)' if args.torch_frozen else 'on, as in the original'
    models_named = 'G, D, T' if args.attack == 'gmi' else 'every model'
    print(f'pytorch: weight gradients of {models_named} {grads}; seeds run one after another')
    flops = jax_side.flops()

    # Warm-up: JAX compiles on its first call (the time includes one run of the chunk).
    if kind == 'kedmi':
        torch_side.per_instance = True  # The check: D on each sample, as the library.
    compile_s, jax_aux = jax_side.run()
    _, torch_aux = torch_side.run()
    if kind == 'kedmi':
        torch_side.per_instance = False  # The timed loop: D on the batch, as the original.
    assert not torch_side.replay, 'JAX draws left over'
    step = args.k - 1
    columns = [c for c in ('prior', 'iden', 'reg') if c in jax_aux]
    rows = []
    for side, aux in (('jax', jax_aux), ('pytorch', torch_aux)):
        values = [aux[c] for c in columns] + [total_loss(aux, cfg)]
        assert all(np.isfinite(values)), (side, aux)
        rows.append((side, values))
    if args.attack == 'gmi':
        formula = 'prior + lam * iden'
    elif kind == 'plgmi':
        formula = f'iden = the max margin summed over {cfg.views} views'
    else:
        formula = 'prior + lam * (iden + reg_weight * reg)'
    print(f'\nloss at step {step} (means over identities and seeds; {formula}):')
    print(f'{"side":10} ' + ' '.join(f'{c:>12}' for c in columns) + f' {"total":>14}')
    for side, values in rows:
        print(f'{side:10} ' + ' '.join(f'{v:12.6f}' for v in values[:-1]) + f' {values[-1]:14.6f}')
    rel = abs(rows[0][1][-1] - rows[1][1][-1]) / max(abs(rows[1][1][-1]), 1e-12)
    print(f'relative difference of the totals: {rel:.2e}', end='')
    same = 'same weights, latents and labels' + ('' if kind == 'gmi' else ' and random draws')
    print(f' ({same}: float32 rounding only)' if step == 0 else '')
    if kind == 'kedmi':
        batch_prior, alone = torch_aux['prior_batch_d'], torch_aux['prior']
        print(
            f'pytorch prior with D on the whole batch (the original; the timed loop): '
            f'{batch_prior:.6f} (the check above scores each sample alone, as the library; '
            f'relative difference {abs(batch_prior - alone) / max(abs(alone), 1e-12):.2e})'
        )
    latent_diff = same = None
    adam = kind in ('kedmi', 'plgmi')
    if cfg.reference_batch == args.identities or adam:
        z_jax = jax.tree.leaves(jax.tree.map(np.asarray, jax_side.latent))
        z_torch = jax.tree.leaves(torch_side.latents())
        pairs = zip(z_jax, z_torch, strict=True)
        diff = latent_diff = max(float(np.abs(a - b).max()) for a, b in pairs)
        note = ''
        if cfg.reference_batch != args.identities:
            note = (
                f' (identities {args.identities} != reference_batch {cfg.reference_batch}: '
                'the loss scales differ, which Adam almost cancels)'
            )
        print(
            f'latents after the warm-up ({args.k} step(s)): max |z_jax - z_torch| = {diff:.2e}'
            f'{note}'
        )
    else:
        print(
            f'latents not compared: identities ({args.identities}) != reference_batch '
            f'({cfg.reference_batch}), so the step sizes differ (the original divides by the '
            'batch, this library by reference_batch)'
        )
    if adam:
        # Adam's first step is lr * g / (|g| + eps), about lr * sign(g): a component whose
        # gradient is near zero on both sides may step by any amount up to lr, either way
        # (the max difference above), so compare the directions too.
        z0 = jax.tree.leaves(jax_side.z0)
        signs = [
            np.sign(a - z) == np.sign(b - z) for a, b, z in zip(z_jax, z_torch, z0, strict=True)
        ]
        same = float(np.mean(np.concatenate([x.ravel() for x in signs])))
        print(f'step directions of the latents agree in {same:.2%} of the components')

    sides = {'jax': jax_side, 'pytorch': torch_side}
    times = alternate(sides, args.reps, 's/step', per=args.k)  # Alternating rep by rep.
    medians, ratio = report_medians(times, flops)
    print(
        f'jax compile: {compile_s:.1f} s (first call of the chunk function, one run of the '
        f'chunk included; minus the median chunk: {compile_s - medians["jax"] * args.k:.1f} s)'
    )
    memory = peak_memory(dev)
    print(f'peak RSS of the process: {memory["peak_rss_mb"]:.0f} MiB')
    wall = time.perf_counter() - _START
    print(f'wall time of the script: {wall:.1f} s')
    result = {
        'name': f'{args.attack}_attack',
        'target': args.target,
        'identities': args.identities,
        'seeds': args.seeds,
        'seed_chunk': jax_side.seed_chunk,
        'batch': args.identities,
        'k': args.k,
        'reps': args.reps,
        'torch_frozen': args.torch_frozen,
        **timing_result(args.quick, dev, medians, ratio, compile_s, flops, memory),
        'loss_step': step,
        'loss_rel_diff': rel,
        'latent_max_abs_diff': latent_diff,
    }
    if args.attack != 'gmi':
        result.update(attack=label, script_wall_s=wall)
        if same is not None:
            result['step_sign_agreement'] = same
        if kind == 'kedmi':
            result['prior_batch_d'] = torch_aux['prior_batch_d']
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
