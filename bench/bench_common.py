"""What the bench scripts share: the machine and its devices, parameter counts, FLOPs, peak
memory, and Flax variables back into PyTorch modules."""

import importlib.metadata
import math
import os
import platform
import resource
import statistics

import jax
import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def torch_device(name: str) -> torch.device:
    """`auto`: CUDA when PyTorch sees it, else the CPU."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(name)


def print_machine(dev: torch.device) -> None:
    """Prints the machine, its load, the versions and where each side runs."""
    print(f'machine: {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)')
    print(f'load average before the run: {" ".join(f"{v:.2f}" for v in os.getloadavg())}')
    jaxlib = importlib.metadata.version('jaxlib')
    print(
        f'versions: jax {jax.__version__} (jaxlib {jaxlib}), torch {torch.__version__}, '
        f'python {platform.python_version()}'
    )
    print(f'jax devices: {jax.devices()}')
    print(f'torch device: {dev}; threads: {torch.get_num_threads()} (PyTorch default, not set)')
    print(f'jax compilation cache: {jax.config.jax_compilation_cache_dir or "off"}')


def count(tree) -> int:
    """The number of parameters in a pytree of arrays."""
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(tree))


def step_flops(lowered) -> float | None:
    """FLOPs of a lowered JAX computation by XLA's cost analysis (None when unavailable).

    A `lax.scan` body is counted once, so for a chunk of k steps this is one step's FLOPs.
    """
    try:
        cost = lowered.cost_analysis()
    except Exception:  # some backends have no cost analysis
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = (cost or {}).get('flops')
    return float(flops) if flops and flops > 0 else None


def peak_memory(dev: torch.device) -> dict:
    """Peak RSS of the process and, on a GPU, the peak device memory of each side (MiB)."""
    out = {'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    stats = jax.devices()[0].memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
        out['jax_device_peak_mb'] = stats['peak_bytes_in_use'] / 2**20
    if dev.type == 'cuda':
        out['torch_device_peak_mb'] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def torch_state_from_flax(rules, variables, like: dict) -> dict[str, torch.Tensor]:
    """The reverse of a converter: the PyTorch state dict that `rules` turn into `variables`.

    Each `Rule(src, dst, transform)` of a converter (`tldmi_jax.interop`) fills the Flax
    leaf `dst` from the tensor `src`; here the tensor is placed so that `transform` of it
    gives the leaf exactly (the transforms only move and reshape elements: transposes,
    [C, H, W] -> [H, W, C], a scalar -> [1]).

    Args:
      rules: the converter's rules for the model (e.g. `classifiers.torchvision_resnet`).
      variables: the Flax variables, collections at the top ({'params', ...}).
      like: the PyTorch module's `state_dict()` (names and shapes).

    Returns:
      `{name: tensor}` for every rule's `src`; pass it to `load_state_dict(strict=False)`
      (buffers no rule maps, such as FIR filters, keep the module's values).

    Raises:
      ValueError: a rule's shapes do not fit, or a Flax leaf no rule reads.
    """
    flat = traverse_util.flatten_dict(variables, sep='/')
    state = {}
    for rule in rules:
        shape = tuple(like[rule.src].shape)
        index = np.asarray(rule.transform(np.arange(math.prod(shape)).reshape(shape)))
        leaf = np.asarray(flat[rule.dst], np.float32)
        if index.shape != leaf.shape:
            raise ValueError(
                f'{rule.src} {shape} -> {rule.dst} {index.shape}, Flax has {leaf.shape}'
            )
        out = np.empty(math.prod(shape), np.float32)
        out[index.ravel()] = leaf.ravel()
        state[rule.src] = torch.from_numpy(out.reshape(shape))
    unread = sorted(set(flat) - {rule.dst for rule in rules})
    if unread:
        raise ValueError(f'Flax variables no rule reads: {unread}')
    return state


def alternate(sides: dict, reps: int, unit: str, per: float = 1.0) -> dict[str, list[float]]:
    """Runs each side's `run()` (returning `(seconds, aux)`) `reps` times, the sides
    alternating rep by rep; returns `{side: [seconds / per, ...]}` and prints each rep."""
    times = {side: [] for side in sides}
    for rep in range(reps):
        for side, runner in sides.items():
            seconds, _ = runner.run()
            times[side].append(seconds / per)
        done = ', '.join(f'{side} {ts[-1]:.3f} {unit}' for side, ts in times.items())
        print(f'rep {rep + 1}/{reps}: {done}', flush=True)
    return times


def report_medians(times: dict[str, list[float]], flops: float | None, digits: int = 2):
    """Prints each side's median, min and max seconds per step, the ratio PyTorch / JAX and
    the achieved GFLOP/s of both; returns `(medians, ratio)`."""
    medians = {side: statistics.median(ts) for side, ts in times.items()}
    print(f'\n{"side":10} {"median s/step":>14} {"min":>10} {"max":>10}')
    for side, ts in times.items():
        print(f'{side:10} {medians[side]:14.3f} {min(ts):10.3f} {max(ts):10.3f}')
    ratio = medians['pytorch'] / medians['jax']
    print(f'ratio pytorch/jax (medians): {ratio:.2f}  (> 1: tldmi_jax is faster)')
    if flops:
        print(
            f'step: {flops / 1e9:.{digits}f} GFLOP (XLA cost analysis of the JAX step); achieved '
            f'jax {flops / medians["jax"] / 1e9:.1f} GFLOP/s, pytorch '
            f'{flops / medians["pytorch"] / 1e9:.1f} GFLOP/s'
        )
    return medians, ratio


def timing_result(quick: bool, dev, medians: dict, ratio, compile_s, flops, memory) -> dict:
    """The BENCH_RESULT keys every two-sided row shares (bench/run_all.py reads them):
    where each side ran, their median seconds per step and ratio, the JAX compile time,
    the FLOPs of one JAX step and the peak memory (`peak_memory`'s keys)."""
    return {
        'quick': quick,
        'torch_device': str(dev),
        'jax_backend': jax.default_backend(),
        'jax_s': medians['jax'],
        'torch_s': medians['pytorch'],
        'ratio': ratio,
        'compile_s': compile_s,
        'flops_per_step': flops,
        **memory,
    }


# PyTorch pieces of PLG-MI shared by bench_attack.py and bench_gan.py.


def max_margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PLG-MI's inversion loss: mean(-logit_y) + mean(largest logit of another class)."""
    real = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    top2 = torch.argsort(logits, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == labels, top2[:, -2], top2[:, -1])
    return -real.mean() + logits.gather(1, other.unsqueeze(1)).squeeze(1).mean()


def warp(images: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of images [B, C, H, W] at pixel coordinates ys, xs [B, H, W]
    (zeros outside)."""
    h, w = images.shape[2:]
    grid = torch.stack([2.0 * xs / (w - 1) - 1.0, 2.0 * ys / (h - 1) - 1.0], dim=-1)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=True)


def augment(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """PLG-MI's augmentation of the fakes, each image's transform drawn from u [B, 8]:
    random resized crop (scale 0.8-1, square) + horizontal flip as one warp, brightness and
    contrast jitter (0.2) with probability 0.5, rotation by up to 5 degrees (a second warp),
    as `tldmi_jax.priors.plgmi.augment` (which follows Kornia's list)."""
    b, c, h, w = images.shape
    col = lambda v: v.view(b, 1, 1)
    ii = torch.arange(h, dtype=images.dtype, device=images.device).view(1, h, 1)
    jj = torch.arange(w, dtype=images.dtype, device=images.device).view(1, 1, w)
    side = torch.sqrt(0.8 + 0.2 * u[:, 0])
    top, left = u[:, 1] * (1.0 - side) * h, u[:, 2] * (1.0 - side) * w
    jj_src = torch.where(col(u[:, 3] < 0.5), w - 1.0 - jj, jj)
    ys = (col(top) + (ii + 0.5) * col(side) - 0.5).expand(b, h, w)
    xs = (col(left) + (jj_src + 0.5) * col(side) - 0.5).expand(b, h, w)
    out = warp(images, ys.clamp(0, h - 1), xs.clamp(0, w - 1))
    bright = (0.8 + 0.4 * u[:, 4]).view(b, 1, 1, 1)
    contrast = (0.8 + 0.4 * u[:, 5]).view(b, 1, 1, 1)
    jittered = (out * bright).clamp(0.0, 1.0)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)[:c]
    gray = (jittered * luma.view(1, c, 1, 1)).sum(1).mean(dim=(1, 2)).view(b, 1, 1, 1)
    jittered = ((jittered - gray) * contrast + gray).clamp(0.0, 1.0)
    out = torch.where((u[:, 6] < 0.5).view(b, 1, 1, 1), jittered, out)
    angle = torch.deg2rad(10.0 * u[:, 7] - 5.0)
    cos, sin = col(torch.cos(angle)), col(torch.sin(angle))
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys = cy + cos * (ii - cy) - sin * (jj - cx)
    xs = cx + sin * (ii - cy) + cos * (jj - cx)
    return warp(out, ys, xs)
