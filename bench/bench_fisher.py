r"""Empirical Fisher information: tldmi_jax's per-example gradients vs a PyTorch loop.

  PYTHONPATH=. python bench/bench_fisher.py [--arch=vgg16] [--examples=1000]
      [--torch-examples=M] [--chunk=16] [--reps=1] [--seed=0] [--method=layers]
      [--other-examples=K] [--per=tensor] [--quick] [--diagnose]

The issue's row: "Fisher information over 1,000 examples: vmapped per-example gradients
against a PyTorch per-example loop". Both sides compute the per-parameter empirical diagonal
Fisher of the cross-entropy, F_j = (1/N) sum_n (d CE(f(x_n), y_n) / d theta_j)^2, of the same
model with the same random weights on the same random examples:

- model: `--arch=vgg16` (default), TL-DMI's VGG16-BN target at 64x64x3 with 1000 classes;
  `facenet64` (IR-50 at 64 px, 1000 classes); `small`, the demo's SmallCNN (Fashion-MNIST
  config: 32x32x1, 5 classes). The PyTorch modules are the full-size references of
  tests/interop (`TorchVGG16`, `TorchIR64`) and, for `small`, the twin defined here. They get
  He-normal conv/linear weights (`he_init` of tests/interop/test_attack_parity.py; with
  PyTorch's default init the signal shrinks ~2.5x per layer in eval mode, the Fisher of the
  first layers comes out ~1e-7 of the head's and the two sides differ by ~1e-2 there) and
  BatchNorm affines and running statistics away from their defaults. The library's
  converter (`convert.convert_state_dict`) turns them into the JAX variables, as
  bench/bench_attack.py does.
- examples: seeded uniform images in [0, 1] (what the classifiers take) and uniform labels.
- JAX: `tldmi_jax.analysis.fisher.FisherEstimator` with `classifier_loss`, as `analyze` runs
  it: `--method=layers` (the default, `analysis.per_example.squared_sum`: one vmapped
  backward pass per chunk with respect to the layer outputs, then each layer's per-example
  weight gradients as products of its input and output gradient) or `--method=vmap`
  (`jax.vmap(jax.grad(loss))`), over a chunk of `--chunk` examples, squares summed into a
  running total, one jitted step per chunk (the last one padded and masked). BatchNorm in
  inference mode (running statistics), no dropout, loss = softmax cross-entropy of the
  integer label (no label smoothing).
- `--per=tensor` (the default, as `fisher.analyze` runs it): the JAX side returns each
  parameter tensor's sum of F_j (`per_example.squared_norms`; Gram forms where cheaper), and
  the checks below compare those sums, the PyTorch diagonal summed per tensor;
  `--per=parameter` returns and compares the whole diagonal.
- The other JAX method (`vmap` when timing `layers`, and the reverse) is timed too on the
  first K = `--other-examples` examples (default: one chunk; 0: not at all), after its own
  compile, and its Fisher compared with the main one (`methods_max_rel_diff`).
- PyTorch: the loop of research code: model in eval mode, for every example one forward on a
  batch of 1, `F.cross_entropy` (mean over the batch of 1 = the example's loss), backward,
  then `total[name] += p.grad ** 2` for every parameter with `requires_grad` (the VGG16 head's
  BatchNorm1d bias is frozen in the original and absent from our model).

Timing: after a warm-up (JAX: the compile, on one chunk; PyTorch: two examples) the sides
alternate rep by rep (`--reps`, default 1). JAX processes all N = `--examples` examples; PyTorch
the first M = `--torch-examples` (default N) and its time is extrapolated linearly to N (its
cost is the same for every example). Reported per example: the median over reps of the
side's seconds / examples it processed. Ratio = PyTorch s/example / JAX s/example (> 1: tldmi_jax
is faster).

Correctness: both Fisher diagonals over the first M examples (the JAX one recomputed on them
if M < N), the PyTorch one mapped onto the JAX parameter tree by the same converter (its
transforms are layout changes only). Printed per layer group of the model (the means that
`fisher.analyze` reports) and per parameter tensor; max_rel_err is the largest relative L2
error ||F_jax - F_torch|| / ||F_torch|| over the tensors. In float32 most tensors agree to
~1e-6, but the gradient of a ReLU / max-pool network is discontinuous: forward differences of
~1e-6 between the implementations flip an occasional ReLU sign or max-pool argmax (for VGG16
at 64 px roughly every other example has one), which moves that example's gradients of the
layers below the flip by ~1e-3..1e-2, so the first layers' Fisher can differ by ~1e-3.

The last stdout line is `BENCH_RESULT {json}` (name, arch, method, examples,
jax_s_per_example, torch_s_per_example, ratio, max_rel_err, compile_s (the JAX warm-up: the
compile plus one chunk), other_method, other_s_per_example, other_compile_s,
methods_max_rel_diff, peak_rss_mb, quick). `--quick`: 32 JAX examples, 16 PyTorch, chunk 16
(the library's default).
`--diagnose` adds the time of one JAX chunk computed without per-example weight gradients
(the gradient of the chunk's mean loss) and of a jitted batch-of-1 gradient, to tell the
per-example cost of `vmap` apart from the plain backward pass.

Needs torch (`pip install -r requirements-test.txt`) and the repository root on the path (the
PyTorch modules are imported from tests/interop).
"""

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

try:
    import torch
except ImportError:
    sys.exit('bench_fisher.py needs torch: pip install -r requirements-test.txt')

from bench.bench_common import count, cpu_model
from tests.interop import test_convert as classifier_refs
from tests.interop.test_attack_parity import he_init
from tldmi_jax.analysis import fisher
from tldmi_jax.interop import convert, mapping

# arch -> (input size, channels, classes).
SHAPES = {
    'vgg16': (64, 3, 1000),
    'facenet64': (64, 3, 1000),
    'small': (32, 1, 5),  # configs/fashion_mnist.py
}
SMALL_WIDTHS = (32, 64, 128, 256)  # `models.small.SmallCNN` defaults


class TorchSmallCNN(torch.nn.Module):
    """PyTorch twin of `tldmi_jax.models.small.SmallCNN` (no `feat` projection).

    `feature`: per width, Conv3x3 (pad 1) -> BN -> ReLU -> MaxPool 2x2 (children 4i .. 4i+3);
    flatten (NCHW order, as the JAX model flattens) and `fc`.
    """

    def __init__(self, num_classes: int, channels: int, image_size: int):
        super().__init__()
        layers, cin = [], channels
        for width in SMALL_WIDTHS:
            layers += [
                torch.nn.Conv2d(cin, width, 3, padding=1),
                torch.nn.BatchNorm2d(width),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
            ]
            cin = width
        self.feature = torch.nn.Sequential(*layers)
        spatial = image_size // 2 ** len(SMALL_WIDTHS)
        self.fc = torch.nn.Linear(cin * spatial * spatial, num_classes)

    def forward(self, x):
        f = self.feature(x).flatten(1)
        return f, self.fc(f)


def small_rules(model) -> list[mapping.Rule]:
    """`TorchSmallCNN` state dict -> `SmallCNN` variables."""
    rules = []
    for i in range(len(model.widths)):
        rules += mapping.conv(f'feature.{4 * i}', f'block{i}/conv')
        rules += mapping.batch_norm(f'feature.{4 * i + 1}', f'block{i}/bn')
    return rules + mapping.linear('fc', 'fc')


SMALL_KIND = convert.Kind(
    'small_twin',
    'small',
    small_rules,
    'bench_fisher.py: TorchSmallCNN -> SmallCNN',
    num_classes_key='fc.weight',
    image_size=SHAPES['small'][0],
)


def torch_model(arch: str) -> torch.nn.Module:
    """The full-size PyTorch reference with random (He-normal) weights, in eval mode."""
    torch.manual_seed(0)
    if arch == 'small':
        size, channels, classes = SHAPES[arch]
        module = TorchSmallCNN(classes, channels, size)
    else:
        module = classifier_refs.FULL_SIZE[arch]()
    return classifier_refs.randomise(he_init(module, seed=4), seed=3)  # eval mode


def convert_state(arch: str, state: dict[str, np.ndarray]) -> convert.Conversion:
    """The library's conversion of a PyTorch state dict onto the JAX model."""
    size, channels, classes = SHAPES[arch]
    kind = SMALL_KIND if arch == 'small' else arch
    conv = convert.convert_state_dict(
        kind, state, num_classes=classes, image_size=size, channels=channels
    )
    assert conv.num_classes == classes and conv.image_size == size, conv.report
    assert not conv.report['left_fresh'], conv.report
    return conv


def examples(arch: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images [n, H, W, C] uniform in [0, 1] and n labels, from `seed`; the first k of
    them are the same for every n >= k (one stream for the images, one for the labels)."""
    size, channels, classes = SHAPES[arch]
    rng_x, rng_y = np.random.default_rng(seed).spawn(2)
    x = rng_x.uniform(size=(n, size, size, channels)).astype(np.float32)
    y = rng_y.integers(0, classes, n).astype(np.int32)
    return x, y


class JaxSide:
    """`fisher.FisherEstimator(fisher.classifier_loss(...))`, as `fisher.analyze` builds it."""

    def __init__(
        self,
        conv: convert.Conversion,
        x: np.ndarray,
        y: np.ndarray,
        chunk: int,
        method: str,
        per: str = 'tensor',
    ):
        self.model = conv.model
        self.batch_stats = jax.device_put(conv.batch_stats)
        self.params = jax.device_put(conv.params)
        self.loss = fisher.classifier_loss(self.model, self.batch_stats)
        self.estimator = fisher.FisherEstimator(self.loss, chunk, method=method, per=per)
        self.x, self.y = x, y

    def run(self, n: int) -> tuple[float, dict]:
        """The Fisher of the first n examples: (seconds, tree of float64 means)."""
        tic, cpu = time.perf_counter(), time.process_time()
        result, seen = self.estimator.run(self.params, [(self.x[:n], self.y[:n])])
        seconds = time.perf_counter() - tic  # `run` returns numpy: the work is done
        self.cpu = (time.process_time() - cpu) / seconds
        assert seen == n, (seen, n)
        return seconds, result


class TorchSide:
    """The per-example loop of research code: batch of 1, eval mode, `p.grad ** 2`."""

    def __init__(self, module: torch.nn.Module, x: np.ndarray, y: np.ndarray):
        self.module = module.eval()
        self.params = [(k, p) for k, p in module.named_parameters() if p.requires_grad]
        self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        self.y = torch.from_numpy(y.astype(np.int64))

    def run(self, n: int) -> tuple[float, dict[str, np.ndarray]]:
        """The Fisher of the first n examples: (seconds, {torch name: float32 mean})."""
        total = {k: torch.zeros_like(p) for k, p in self.params}
        tic, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            self.module.zero_grad(set_to_none=True)
            _, logits = self.module(self.x[i : i + 1])
            loss = torch.nn.functional.cross_entropy(logits, self.y[i : i + 1])
            loss.backward()
            for k, p in self.params:
                total[k] += p.grad**2
        seconds = time.perf_counter() - tic
        self.cpu = (time.process_time() - cpu) / seconds
        return seconds, {k: (t / n).numpy() for k, t in total.items()}


def torch_fisher_as_jax(arch: str, module: torch.nn.Module, means: dict) -> dict:
    """The PyTorch Fisher on the JAX parameter tree: the module's state dict with every
    trained parameter replaced by its Fisher, through the converter (buffers and the frozen
    VGG16 head bias keep their values, which the checks read)."""
    state = classifier_refs.numpy_state(module)
    missing = sorted(set(means) - set(state))
    assert not missing, missing
    state.update(means)
    return convert_state(arch, state).params


def compare(jax_tree: dict, torch_tree: dict) -> list[tuple[str, int, float]]:
    """`(path, size, relative L2 error)` per parameter tensor, worst first."""
    got = traverse_util.flatten_dict(jax_tree, sep='/')
    ref = traverse_util.flatten_dict(torch_tree, sep='/')
    assert sorted(got) == sorted(ref), (sorted(set(got) ^ set(ref)),)
    rows = []
    for k in ref:
        a, b = np.asarray(got[k], np.float64), np.asarray(ref[k], np.float64)
        assert a.shape == b.shape, (k, a.shape, b.shape)
        norm = np.linalg.norm(b)
        rel = np.linalg.norm(a - b) / norm if norm > 0 else float(np.linalg.norm(a) > 0)
        rows.append((k, a.size, float(rel)))
    return sorted(rows, key=lambda r: -r[2])


def other_method(args, conv, x, y, main: JaxSide, main_fisher: dict) -> dict:
    """Times the other JAX method on the first `args.other_examples` examples (after its
    compile) and compares its Fisher with the main method's on them."""
    k = args.other_examples
    name = 'vmap' if args.method == 'layers' else 'layers'
    side = JaxSide(conv, x, y, args.chunk, name, args.per)
    compile_s, _ = side.run(min(args.chunk, k))
    seconds, fisher_other = side.run(k)
    mine = main_fisher if k == args.examples else main.run(k)[1]
    return {
        'other_method': name,
        'other_s_per_example': seconds / k,
        'other_compile_s': compile_s,
        'methods_max_rel_diff': compare(mine, fisher_other)[0][2],
    }


def diagnose(side: JaxSide, chunk: int) -> None:
    """Times one chunk without per-example weight gradients, and a batch-of-1 gradient."""
    x, y = jnp.asarray(side.x[:chunk]), jnp.asarray(side.y[:chunk])

    def mean_loss(params, xs, ys):
        return jnp.mean(jax.vmap(side.loss, in_axes=(None, 0, 0))(params, xs, ys))

    batched = jax.jit(jax.grad(mean_loss))
    single = jax.jit(jax.grad(side.loss))
    per_example = jax.jit(jax.vmap(jax.grad(side.loss), in_axes=(None, 0, 0)))
    cases = (
        ('vmap(grad) of the chunk, no accumulation', lambda: per_example(side.params, x, y), 1),
        ('grad of the mean loss of the chunk (batched)', lambda: batched(side.params, x, y), 1),
        ('grad of one example (batch 1), per example', lambda: single(side.params, x[0], y[0]), 0),
    )
    print(f'\ndiagnosis (JAX, chunk {chunk}; median of 3 after a compile):')
    for name, fn, whole_chunk in cases:
        jax.block_until_ready(fn())
        times = []
        for _ in range(3):
            tic = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - tic)
        per = statistics.median(times) / (chunk if whole_chunk else 1)
        print(f'  {name:48} {per:9.4f} s/example')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='vgg16', choices=sorted(SHAPES))
    p.add_argument('--examples', type=int, default=1000, help='N: examples of the JAX side')
    p.add_argument(
        '--torch-examples',
        type=int,
        default=0,
        help='M <= N: examples of the PyTorch loop, its time extrapolated to N (0: N)',
    )
    p.add_argument('--chunk', type=int, default=16, help='examples per step (JAX)')
    p.add_argument('--method', default='layers', choices=fisher.METHODS, help='JAX method')
    p.add_argument(
        '--per',
        default='tensor',
        choices=fisher.PER,
        help="JAX result: 'tensor' (each tensor's sum, as fisher.analyze computes it) or "
        "'parameter' (the whole diagonal)",
    )
    p.add_argument(
        '--other-examples',
        type=int,
        default=-1,
        help='K: also time the other JAX method on K examples (-1: one chunk; 0: skip)',
    )
    p.add_argument('--reps', type=int, default=1)
    p.add_argument('--seed', type=int, default=0, help='seed of the examples')
    p.add_argument('--quick', action='store_true', help='examples 32, torch-examples 16, chunk 16')
    p.add_argument('--diagnose', action='store_true', help='time JAX without per-example vmap')
    args = p.parse_args()
    if args.quick:
        args.examples, args.torch_examples, args.chunk, args.reps = 32, 16, 16, 1
    args.torch_examples = args.torch_examples or args.examples
    if args.other_examples < 0:
        args.other_examples = min(args.chunk, args.examples)
    if args.other_examples > args.examples:
        p.error('--other-examples must be <= --examples')
    if min(args.examples, args.torch_examples, args.chunk, args.reps) < 1:
        p.error('--examples, --torch-examples, --chunk and --reps must be >= 1')
    if args.torch_examples > args.examples:
        p.error('--torch-examples must be <= --examples')
    n, m = args.examples, args.torch_examples

    module = torch_model(args.arch)
    conv = convert_state(args.arch, classifier_refs.numpy_state(module))
    x, y = examples(args.arch, n, args.seed)
    jax_side = JaxSide(conv, x, y, args.chunk, args.method, args.per)
    torch_side = TorchSide(module, x, y)

    size, channels, classes = SHAPES[args.arch]
    torch_count = sum(q.numel() for _, q in torch_side.params)
    jax_count = count(conv.params)
    print(f'machine: {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)')
    print(f'load average before the run: {" ".join(f"{v:.2f}" for v in os.getloadavg())}')
    print(
        f'versions: jax {jax.__version__} (jaxlib {importlib.metadata.version("jaxlib")}), '
        f'torch {torch.__version__}, python {platform.python_version()}'
    )
    print(f'jax devices: {jax.devices()}')
    print(f'torch threads: {torch.get_num_threads()} (PyTorch default, not set)')
    print(
        f'model: {args.arch} ({type(conv.model).__name__}), {size}x{size}x{channels}, '
        f'{classes} classes, random weights; trained parameters torch / jax: '
        f'{torch_count:,} / {jax_count:,}'
    )
    print(
        f'fisher: CE of the integer label (no smoothing), BatchNorm inference mode; '
        f'examples: jax {n} (chunk {args.chunk}), pytorch {m}'
        + (f' (time extrapolated x{n / m:.3g} to {n})' if m < n else '')
        + f'; reps {args.reps}'
    )
    if args.method == 'vmap':
        print(
            f'jax (vmap): {args.chunk} x {jax_count:,} per-example gradients per chunk = '
            f'{args.chunk * jax_count * 4 / 2**30:.2f} GiB float32',
            flush=True,
        )
    else:
        print(
            f'jax (layers, per {args.per}): '
            + (
                "each tensor's squared norm (Gram form where cheaper), per example"
                if args.per == 'tensor'
                else 'per-example weight gradients formed one example at a time'
            )
        )

    # Warm-up: the JAX compile on one chunk (the time includes one run of it).
    warm = min(args.chunk, n)
    compile_s, _ = jax_side.run(warm)
    torch_side.run(min(2, m))
    print(f'jax warm-up (compile + {warm} examples): {compile_s:.1f} s', flush=True)

    times = {'jax': [], 'pytorch': []}
    torch_means = jax_full = None
    for rep in range(args.reps):  # alternate the sides rep by rep
        seconds, result = jax_side.run(n)
        times['jax'].append(seconds / n)
        jax_full = jax_full if jax_full is not None else result
        seconds, result = torch_side.run(m)
        times['pytorch'].append(seconds / m)
        torch_means = torch_means if torch_means is not None else result
        print(
            f'rep {rep + 1}/{args.reps}: jax {times["jax"][-1]:.4f} s/example ({n} examples, '
            f'cpu/wall {jax_side.cpu:.2f}), pytorch {times["pytorch"][-1]:.4f} s/example '
            f'({m}, cpu/wall {torch_side.cpu:.2f})',
            flush=True,
        )

    # Correctness on the first m examples (both sides processed them).
    jax_fisher = jax_full if m == n else jax_side.run(m)[1]
    torch_fisher = torch_fisher_as_jax(args.arch, module, torch_means)
    counts = None
    if args.per == 'tensor':  # Compared as the library computes it: each tensor's sum.
        torch_fisher = jax.tree.map(np.sum, torch_fisher)
        counts = jax.tree.map(np.size, conv.params)
    rows = compare(jax_fisher, torch_fisher)
    max_rel = rows[0][2]
    groups_jax = fisher.group_means(jax_fisher, conv.model.layer_groups, counts)
    groups_torch = fisher.group_means(torch_fisher, conv.model.layer_groups, counts)
    print(f'\nFisher over the first {m} examples, per layer group (mean over its parameters):')
    print(f'{"group":14} {"params":>11} {"jax":>13} {"pytorch":>13} {"rel diff":>9}')
    group_rel = []
    for a, b in zip(groups_jax, groups_torch, strict=True):
        rel = abs(a['value'] - b['value']) / max(abs(b['value']), 1e-30)
        group_rel.append(rel)
        print(
            f'{a["group"]:14} {a["num_params"]:11,} {a["value"]:13.6e} {b["value"]:13.6e} '
            f'{rel:9.1e}'
        )
    print(f'max relative difference of the group means: {max(group_rel):.2e}')
    print('worst parameter tensors (relative L2 error ||F_jax - F_torch|| / ||F_torch||):')
    for path, leaf_size, rel in rows[:5]:
        print(f'  {path:32} {leaf_size:11,} {rel:.2e}')
    print(f'max relative L2 error over {len(rows)} tensors: {max_rel:.2e}')
    close = sum(r[2] <= 1e-5 for r in rows)
    median = statistics.median(r[2] for r in rows)
    print(f'tensors within 1e-5: {close}/{len(rows)}; median error {median:.1e}')
    if max_rel > 1e-4:
        print(
            'note: the gradient of a ReLU / max-pool network is discontinuous; float32 forward '
            'differences of ~1e-6 between the two implementations flip an occasional ReLU sign '
            'or max-pool argmax (about one per few examples for VGG16), which moves the '
            'gradients of the layers below it by ~1e-3..1e-2 for that example'
        )

    jax_s = statistics.median(times['jax'])
    torch_s = statistics.median(times['pytorch'])
    ratio = torch_s / jax_s
    print(f'\n{"side":10} {"s/example":>10} {"min":>10} {"max":>10} {"s for N":>10}')
    for side, ts in times.items():
        med = statistics.median(ts)
        print(f'{side:10} {med:10.4f} {min(ts):10.4f} {max(ts):10.4f} {med * n:10.1f}')
    if m < n:
        print(f'(pytorch: measured on {m} examples, "s for N" extrapolated linearly to {n})')
    print(f'ratio pytorch/jax (medians): {ratio:.2f}  (> 1: tldmi_jax is faster)')
    other = other_method(args, conv, x, y, jax_side, jax_full) if args.other_examples else {}
    if other:
        print(
            f'jax --method={other["other_method"]}: {other["other_s_per_example"]:.4f} s/example '
            f'on {args.other_examples} examples (compile + one chunk {other["other_compile_s"]:.1f}'
            f' s); --method={args.method} is {other["other_s_per_example"] / jax_s:.2f}x as '
            f'fast; the two Fisher results differ by {other["methods_max_rel_diff"]:.1e} '
            '(max relative L2 error over the tensors)'
        )
    if args.diagnose:
        diagnose(jax_side, args.chunk)
    print(f'load average after the run: {" ".join(f"{v:.2f}" for v in os.getloadavg())}')
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f'peak RSS of the process: {peak:.0f} MiB')
    result = {
        'name': 'fisher',
        'arch': args.arch,
        'examples': n,
        'jax_s_per_example': jax_s,
        'torch_s_per_example': torch_s,
        'ratio': ratio,
        'max_rel_err': max_rel,
        'method': args.method,
        'per': args.per,
        'compile_s': compile_s,
        **other,
        'peak_rss_mb': round(peak, 1),
        'quick': args.quick,
    }
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
