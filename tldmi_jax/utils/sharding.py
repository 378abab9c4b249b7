"""Data parallelism with `NamedSharding` (no pmap): batch split on 'data', state replicated.

Works for one device and for N. On a CPU host, `XLA_FLAGS=--xla_force_host_platform_device_count=N`
gives N devices, which lets XLA:CPU's single-threaded convolutions use several cores.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(batch_size: int | None = None) -> Mesh:
    """A 1-D mesh named 'data' over the largest device count that divides `batch_size`."""
    devices = jax.devices()
    n = len(devices)
    if batch_size is not None:
        while n > 1 and batch_size % n:
            n -= 1
    # Auto axis types: the classic GSPMD propagation (jax.make_mesh defaults to Explicit).
    return jax.make_mesh(
        (n,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n]
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` on all devices of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Splits every leaf of `batch` along its first axis over the 'data' axis."""
    sharding = NamedSharding(mesh, PartitionSpec('data'))
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), batch)
