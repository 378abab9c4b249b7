"""Data parallelism with `NamedSharding` (no pmap): batch split on 'data', state replicated.

Works for one device and for N. On a CPU host, `XLA_FLAGS=--xla_force_host_platform_device_count=N`
gives N devices, which lets XLA:CPU's single-threaded convolutions use several cores.
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tldmi_jax.utils import distributed


def check_devices(requested: int | None) -> int:
    """Validates a `config.devices` request; returns the number of devices to use.

    Args:
      requested: devices asked for; 0 or None means all present.

    Raises:
      ValueError: more devices than present, or a negative count.
    """
    present = jax.device_count()
    requested = int(requested or 0)
    if requested < 0 or requested > present:
        kind = jax.devices()[0].platform
        raise ValueError(
            f'config.devices={requested} but {present} {kind} device(s) are present; '
            f'use --config.devices=0 (all) or a number from 1 to {present}'
        )
    return requested or present


def data_mesh(batch_size: int | None = None, devices: int | None = 0) -> Mesh:
    """A 1-D mesh named 'data' over the largest device count that divides `batch_size`.

    Args:
      batch_size: the global batch (None: no constraint).
      devices: at most this many devices (0 or None: all present).

    Raises:
      ValueError: if `devices` exceeds the devices present (see `check_devices`).
    """
    n = check_devices(devices)
    devices = jax.devices()
    if batch_size is not None and jax.process_count() > 1 and batch_size % n:
        # Every process must hold an equal share of every batch (`from_process_rows`).
        raise ValueError(
            f'batch of {batch_size} does not split over the {n} devices of '
            f'{jax.process_count()} processes; use a multiple of {n}'
        )
    if batch_size is not None:
        while n > 1 and batch_size % n:
            n -= 1
    # Auto axis types: the classic GSPMD propagation (jax.make_mesh defaults to Explicit).
    return jax.make_mesh(
        (n,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n]
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` on all devices of `mesh` (of every process).

    With several processes each one places its own host copy on its own devices
    (`jax.make_array_from_process_local_data`); one digest of all leaves, compared across the
    processes in one collective, checks first that the copies are the same. (`jax.device_put`
    would instead gather and compare every leaf in a collective of its own: 180 of them for a
    GAN's state, each a program that a process other than 0 compiles again in every run.)

    Raises:
      ValueError: the processes hold different values.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    host = jax.device_get(tree)  # Host values: the same in every process.
    if {d.process_index for d in mesh.devices.flat} != set(range(jax.process_count())):
        # A mesh without some process's devices (`config.devices` below the device count):
        # such a process has nothing to place, so JAX's own path (the same in every process).
        return jax.device_put(host, sharding)
    host = jax.tree.map(np.asarray, host)
    distributed.assert_same_everywhere(host, 'the replicated state')
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), host)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over 'data'."""
    return NamedSharding(mesh, PartitionSpec('data'))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Splits every leaf of `batch` along its first axis over the 'data' axis."""
    sharding = NamedSharding(mesh, PartitionSpec('data'))
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), batch)


def from_process_rows(batch: Any, mesh: Mesh, global_size: int) -> Any:
    """The global batch of `global_size` rows from this process's rows of it
    (`distributed.process_rows`), split over 'data'; with one process, `shard_batch`."""
    if jax.process_count() == 1:
        return shard_batch(batch, mesh)
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x), (global_size, *np.shape(x)[1:])
        ),
        batch,
    )


def per_device(fn: Callable[..., Any], mesh: Mesh | None, num_batched: int) -> Callable[..., Any]:
    """`fn(shared, *batched)` run by each device on its slice of the batch (`shard_map`).

    For per-example gradients, `jax.vmap(jax.grad(...))`: when XLA's SPMD partitioner
    splits them over the batch, the per-example weight gradients of convolutions come out
    wrong (XLA:CPU, jax 0.10.2; tests/utils/test_sharding.py), while inside `shard_map`
    each device computes an ordinary local batch. `shared` is cast to device-varying
    inside, so that gradients with respect to it stay per device (an invariant input's
    gradient would be summed over the devices). Use it inside `jax.jit`.

    Args:
      fn: `(shared, *batched) -> outputs`, every output with the leading batch axis.
      mesh: the 'data' mesh the batch is sharded over; None or one device: `fn` itself.
      num_batched: how many arguments after `shared` carry the batch axis.

    Returns:
      A function with `fn`'s signature whose outputs are sharded over 'data'.
    """
    if mesh is None or mesh.size == 1:
        return fn

    def local(shared, *batched):
        shared = jax.tree.map(lambda a: jax.lax.pcast(a, 'data', to='varying'), shared)
        return fn(shared, *batched)

    batch = PartitionSpec('data')
    in_specs = (PartitionSpec(), *([batch] * num_batched))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=batch)
