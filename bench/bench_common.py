"""What the bench scripts share: the machine's CPU, parameter counts, FLOPs and peak memory."""

import math
import platform
import resource

import jax
import numpy as np
import torch


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
