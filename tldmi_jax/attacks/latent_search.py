"""The one latent-search loop behind every attack.

An attack is a `Problem`: how to initialise one instance's latent (a point z, or a
Gaussian (mu, log sigma^2)), the loss of one instance (prior + identity terms, already
scaled), the optimizer, a projection applied after every update (the clamp), and how to
turn a final latent into images. The loop

* `vmap`s the per-instance update over seeds and over the identities of a batch,
* runs `lax.scan` over steps inside one `jax.jit` (in chunks of `checkpoint_every` steps),
* shards the identity axis over a 1-D device mesh with `NamedSharding` (1 or N devices),
* checkpoints latents and optimizer state after every chunk, and records finished
  identity batches, so a killed attack rerun with the same command ends with the same
  reconstructions as an uninterrupted one.

Every instance's randomness comes from `instance_key(key, identity, seed_index)`, and no
instance reads another's data, so the result for an identity does not depend on which
identities share its batch or on the device count (up to float summation order).
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from tldmi_jax.utils import checkpoint, distributed, sharding

Latent = Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """What an attack supplies to the loop; every function handles ONE instance.

    Attributes:
      init: `key -> latent` (a pytree, e.g. z [D] or {'mu': [D], 'log_var': [D]}).
      loss: `(latent, identity, key) -> (loss, aux)`; `aux` a dict of scalars for logging.
      tx: optimizer over the latent.
      project: `latent -> latent` after each update (e.g. clamp z to [-1, 1]).
      render: `(latent, identity, key) -> images [K, H, W, C]` in [0, 1]: the K
        reconstructions of the instance (K = 1 for a point latent, 5 KEDMI samples...).
    """

    init: Callable[[jax.Array], Latent]
    loss: Callable[[Latent, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    tx: optax.GradientTransformation
    project: Callable[[Latent], Latent] = lambda latent: latent
    render: Callable[[Latent, jax.Array, jax.Array], jax.Array] | None = None


def instance_key(key: jax.Array, identity: jax.Array, seed_index: jax.Array) -> jax.Array:
    """The key of one (identity, seed) instance: independent of batching and devices."""
    return jax.random.fold_in(jax.random.fold_in(key, identity), seed_index)


def _strong(tree: Any) -> Any:
    """`tree` without weak types: a weakly typed first input and the strongly typed outputs
    of the first chunk would otherwise give two compilations of the same chunk."""
    return jax.tree.map(lambda a: a.astype(a.dtype), tree)


def _purpose_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Split an instance key into (init, step, render) keys."""
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)


@dataclasses.dataclass
class SearchState:
    """Latents and optimizer states of one identity batch, leading axes [B, S]."""

    latent: Latent
    opt_state: Any
    step: int


class LatentSearch:
    """Runs a `Problem` for identity batches; compiled once per batch shape.

    Args:
      problem: the attack.
      num_seeds: instances per identity (seeds).
      key: the attack's base key (from config.seed).
      checkpoint_every: steps per jitted chunk (and between checkpoints).
      devices: shard the identities over at most this many devices (0: all).
    """

    def __init__(
        self,
        problem: Problem,
        num_seeds: int,
        key: jax.Array,
        checkpoint_every: int,
        devices: int = 0,
    ):
        self.problem = problem
        self.devices = sharding.check_devices(devices)
        self.num_seeds = num_seeds
        self.key = key
        self.chunk = max(1, int(checkpoint_every))
        self._run_chunk = jax.jit(self._chunk_fn, static_argnums=(4,))
        self._init = jax.jit(self._init_fn)
        self._render = jax.jit(self._render_fn)

    # --- per-batch pure functions (vmapped over [B, S]) ---
    def _keys(self, identities: jax.Array) -> jax.Array:
        seeds = jnp.arange(self.num_seeds)
        return jax.vmap(lambda i: jax.vmap(lambda s: instance_key(self.key, i, s))(seeds))(
            identities
        )

    def _init_fn(self, identities: jax.Array):
        keys = self._keys(identities)
        latent = jax.vmap(jax.vmap(lambda k: self.problem.init(_purpose_keys(k)[0])))(keys)
        latent = _strong(latent)
        opt_state = _strong(jax.vmap(jax.vmap(self.problem.tx.init))(latent))
        return latent, opt_state

    def _update(self, latent, opt_state, identity, key, t):
        step_key = jax.random.fold_in(_purpose_keys(key)[1], t)
        (loss, aux), grad = jax.value_and_grad(self.problem.loss, has_aux=True)(
            latent, identity, step_key
        )
        updates, opt_state = self.problem.tx.update(grad, opt_state, latent)
        latent = self.problem.project(optax.apply_updates(latent, updates))
        return latent, opt_state, {'loss': loss, **aux}

    def _chunk_fn(self, latent, opt_state, identities, start, length: int):
        keys = self._keys(identities)
        update = jax.vmap(
            jax.vmap(self._update, in_axes=(0, 0, None, 0, None)), in_axes=(0, 0, 0, 0, None)
        )

        def body(carry, t):
            lat, opt = carry
            lat, opt, aux = update(lat, opt, identities, keys, t)
            return (lat, opt), jax.tree.map(jnp.mean, aux)

        (latent, opt_state), aux = jax.lax.scan(
            body, (latent, opt_state), start + jnp.arange(length)
        )
        return latent, opt_state, jax.tree.map(lambda a: a[-1], aux)

    def _render_fn(self, latent, identities):
        keys = self._keys(identities)
        render = self.problem.render or (lambda lat, i, k: lat[None])
        return jax.vmap(jax.vmap(render, in_axes=(0, None, 0)), in_axes=(0, 0, 0))(
            latent, identities, jax.vmap(jax.vmap(lambda k: _purpose_keys(k)[2]))(keys)
        )

    # --- driver ---
    def run_batch(
        self,
        identities: np.ndarray,
        num_steps: int,
        ckpt_dir: str | None = None,
        progress: str = 'attack',
    ) -> tuple[Latent, np.ndarray, dict[str, float]]:
        """Optimises one identity batch; resumes from `ckpt_dir` if it holds a checkpoint.

        Returns:
          `(latents [B, S, ...], images [B, S, K, H, W, C], last_aux)` as numpy.
        """
        identities = np.asarray(identities, np.int32)
        mesh = sharding.data_mesh(len(identities), self.devices)
        shard = NamedSharding(mesh, PartitionSpec('data'))
        ids = jax.device_put(identities, shard)
        latent, opt_state = self._init(ids)
        step = 0
        mngr = checkpoint.manager(ckpt_dir, max_to_keep=1) if ckpt_dir else None
        if mngr is not None and mngr.latest_step() is not None:
            restored, step = checkpoint.restore_latest(
                mngr, distributed.to_host({'latent': latent, 'opt_state': opt_state})
            )
            latent, opt_state = restored['latent'], restored['opt_state']
            logging.info('Resuming identity batch at step %d', step)
        latent = jax.device_put(latent, shard)
        opt_state = jax.device_put(opt_state, shard)
        aux: dict[str, Any] = {}
        bar = tqdm(
            total=num_steps,
            initial=step,
            desc=progress,
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not distributed.is_main(),
        )
        tic = time.perf_counter()
        while step < num_steps:
            length = min(self.chunk, num_steps - step)
            latent, opt_state, aux = self._run_chunk(latent, opt_state, ids, step, length)
            # The chunk's outputs as its inputs (XLA may replicate a small leaf such as a
            # step count): the next chunk then reuses the compiled one.
            latent, opt_state = jax.device_put((latent, opt_state), shard)
            step += length
            if mngr is not None and step < num_steps:
                checkpoint.save_state(mngr, step, {'latent': latent, 'opt_state': opt_state})
            bar.update(length)
            bar.set_postfix({k: f'{float(v):.3f}' for k, v in aux.items()})
        bar.close()
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()
        images = self._render(latent, ids)
        last = {k: float(v) for k, v in aux.items()}
        last['seconds'] = time.perf_counter() - tic
        # Gathered from every process (identities are sharded over all their devices).
        return distributed.to_host(latent), distributed.to_host(images), last
