"""Multi-host runs with JAX's own multi-controller runtime (one process per host or GPU).

`--config.distributed=True` (train, train_gan, distill, attack, evaluate, fisher and sweep
configs) makes the launcher call
`initialize()` before any other JAX call. The coordinator, the process count and this
process's index come from the environment: `JAX_COORDINATOR_ADDRESS` (host:port),
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` when set, otherwise whatever
`jax.distributed.initialize()` detects itself (Slurm, Cloud TPU, Open MPI, ...). On CPU the
processes exchange data over gloo.

Then every process runs the same program on the mesh over all processes' devices:

* input: `process_rows` is the slice of a global batch this process loads and decodes, and
  `sharding.from_process_rows` assembles the global array from each process's slice
  (`jax.make_array_from_process_local_data`), so the global batch, and therefore every
  number, does not depend on the process count;
* output: only process 0 writes files (`is_main`); `barrier` makes the others wait until a
  file they read next is there; `to_host` gathers a sharded array to every process, and
  `local_copy` gives a process its own copy to compute on alone; `broadcast_from_main` makes
  every process take process 0's decision;
* data preparation: `main_first` (process 0 prepares a dataset, then the others read it).

With one process every function here is the plain single-host behaviour.
"""

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def initialize() -> None:
    """Starts (once) the multi-controller runtime; call it before any other JAX call.

    Raises:
      ValueError: only some of the three `JAX_*` variables are set, or one does not parse.
    """
    import jax

    if jax.distributed.is_initialized():
        return
    given = {name: os.environ.get(name, '') for name in _ENV}
    if any(given.values()) and not all(given.values()):
        missing = ', '.join(name for name, value in given.items() if not value)
        raise ValueError(
            f'--config.distributed=True: {missing} not set; set all of {", ".join(_ENV)} '
            '(or none, on Slurm or Cloud TPU, where JAX reads its own variables)'
        )
    kwargs: dict[str, Any] = {}
    if all(given.values()):
        try:
            kwargs = dict(
                coordinator_address=given['JAX_COORDINATOR_ADDRESS'],
                num_processes=int(given['JAX_NUM_PROCESSES']),
                process_id=int(given['JAX_PROCESS_ID']),
            )
        except ValueError as e:
            raise ValueError(
                f'--config.distributed=True: JAX_NUM_PROCESSES={given["JAX_NUM_PROCESSES"]!r} '
                f'and JAX_PROCESS_ID={given["JAX_PROCESS_ID"]!r} must be integers'
            ) from e
        if not 0 <= kwargs['process_id'] < kwargs['num_processes']:
            raise ValueError(
                f'JAX_PROCESS_ID={kwargs["process_id"]} is outside 0..'
                f'{kwargs["num_processes"] - 1} (JAX_NUM_PROCESSES={kwargs["num_processes"]})'
            )
    # CPU processes need a collectives implementation; GPU and TPU ignore this option.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(**kwargs)


def _runtime() -> Any:
    """`jax` when its multi-controller runtime is up, else None (no import, no backend)."""
    jax = sys.modules.get('jax')
    if jax is None or not jax.distributed.is_initialized():
        return None
    return jax


def process_count() -> int:
    jax = _runtime()
    return 1 if jax is None else jax.process_count()


def is_main() -> bool:
    """True in process 0, the only one that writes files (and in a single-process run)."""
    jax = _runtime()
    return jax is None or jax.process_index() == 0


def multi() -> bool:
    """True when several processes run this program together."""
    return process_count() > 1


def barrier(name: str) -> None:
    """Waits until every process has reached `barrier(name)` (nothing with one process)."""
    if multi():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_from_main(value: bool) -> bool:
    """Process 0's `value` in every process (the value itself with one process)."""
    if not multi():
        return value
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def assert_same_everywhere(tree: Any, what: str) -> None:
    """Checks that every process holds the same host arrays `tree` (shapes, dtypes, bytes): one
    64-bit digest per process, gathered in one collective (nothing with one process).

    Raises:
      ValueError: naming `what` and the processes whose digest differs from process 0's.
    """
    if not multi():
        return
    import jax
    from jax.experimental import multihost_utils

    digest = hashlib.blake2b(digest_size=8)
    for leaf in jax.tree.leaves(tree):
        leaf = np.ascontiguousarray(leaf)
        digest.update(f'{leaf.shape}{leaf.dtype.str};'.encode())
        digest.update(leaf.view(np.uint8).reshape(-1).data if leaf.size else b'')
    mine = np.frombuffer(digest.digest(), np.uint32)  # Two words: no 64-bit JAX types.
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2)
    differ = [i for i, row in enumerate(every) if not np.array_equal(row, every[0])]
    if differ:
        raise ValueError(
            f'{what} differs between processes: process(es) {differ} hold other values than '
            'process 0 (every process must load the same checkpoint and config)'
        )


@contextlib.contextmanager
def main_first(name: str) -> Iterator[None]:
    """Runs the block in process 0 first and in the others after it (e.g. preparing a dataset
    once on a shared filesystem, then reading it everywhere); a plain block in one process."""
    if not multi():
        yield
    elif is_main():
        yield
        barrier(name)
    else:
        barrier(name)
        yield


def process_rows(sharding: Any, global_size: int) -> slice:
    """The rows of a batch of `global_size` that this process's devices hold under `sharding`.

    Raises:
      ValueError: the rows of this process are not one contiguous range.
    """
    if not multi():
        return slice(0, global_size)
    spans = sorted(
        {
            (index[0].start or 0, global_size if index[0].stop is None else index[0].stop)
            for index in sharding.addressable_devices_indices_map((global_size,)).values()
        }
    )
    jax = _runtime()
    start, stop = spans[0]
    for lo, hi in spans[1:]:
        if lo != stop:
            raise ValueError(
                f'process {jax.process_index()} holds rows {spans} of the batch, not one '
                'contiguous range; give each process the same number of devices'
            )
        stop = hi
    return slice(start, stop)


def to_host(tree: Any) -> Any:
    """Every array of `tree` as a numpy array, whole, in every process."""

    import jax

    def get(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not (
            leaf.is_fully_addressable or leaf.is_fully_replicated
        ):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf) if isinstance(leaf, jax.Array) else leaf

    return jax.tree.map(get, tree)


def local_copy(tree: Any) -> Any:
    """`tree` for a computation each process runs alone on its own device: host arrays in a
    multi-process run (a jit with them stays on this process), `tree` itself otherwise."""
    return to_host(tree) if multi() else tree
