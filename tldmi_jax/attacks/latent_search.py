"""The one latent-search loop behind every attack.

An attack is a `Problem`: how to initialise one instance's latent (a point z, or a
Gaussian (mu, log sigma^2)), the loss of one instance (prior + identity terms, already
scaled), the optimizer, a projection applied after every update (the clamp), and how to
turn a final latent into images. The loop

* `vmap`s the per-instance update over seeds and over the identities of a batch,
* runs the steps between checkpoints (`checkpoint_every`) as one jitted `lax.scan`, or on
  CPU as a Python loop over one jitted step (`loop`: XLA:CPU is much slower in the scan),
* shards the identity axis over a 1-D device mesh with `NamedSharding` (1 or N devices),
* checkpoints latents and optimizer state after every chunk, and records finished
  identity batches, so a killed attack rerun with the same command ends with the same
  reconstructions as an uninterrupted one.

Every instance's randomness comes from `instance_key(key, identity, seed_index)`, and no
instance reads another's data, so the result for an identity does not depend on which
identities share its batch or on the device count (up to float summation order).
"""

import dataclasses
import os
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
      prepare: `key -> data`, computed (jitted) once per `LatentSearch` before the first
        identity batch starts (PPA: the scored pool of candidate latents); None: nothing.
      start: `(identity, seeds [S], data) -> latents [S, ...]`: the initial latents of one
        identity's instances from `prepare`'s data, replacing `init` (PPA: the identity's
        best candidates, seed s taking the s-th best); None: `init` from each instance key.
      select: `(images [S, K, H, W, C], identity, key) -> images [S', K, H, W, C]`: the
        final choice among an identity's rendered instances (PPA: the S' most robustly
        classified); None: all of them.
    """

    init: Callable[[jax.Array], Latent]
    loss: Callable[[Latent, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    tx: optax.GradientTransformation
    project: Callable[[Latent], Latent] = lambda latent: latent
    render: Callable[[Latent, jax.Array, jax.Array], jax.Array] | None = None
    prepare: Callable[[jax.Array], Any] | None = None
    start: Callable[[jax.Array, jax.Array, Any], Latent] | None = None
    select: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None


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


# On CPU, the most instances (identities x seeds on one device) one call optimises when
# `seed_chunk` is automatic. XLA:CPU's step grows faster than linearly beyond some size: GMI
# with FaceNet64 at 64 px took 15.6 s for 60 identities x 5 seeds in one call and 11.5 s in
# five calls of 60 (PyTorch, seeds one after another: 14.9-15.2 s); the demo's attack about
# 8 % less in two calls of 50 than in one of 100. At 8 x 5 one call was faster (1.53 vs
# 1.76 s). Results agree up to float rounding, which long attacks amplify (docs/attacks.md).
CPU_INSTANCES_PER_CALL = 64


def auto_seed_chunk(identities: int, num_seeds: int, backend: str) -> int:
    """The automatic seed chunk of a batch of `identities` per device.

    All seeds at once, except on CPU when `identities * num_seeds` exceeds
    `CPU_INSTANCES_PER_CALL`: then the fewest equal chunks that stay within it (at least one
    seed per chunk), so that every chunk has the same shape (one compilation).
    """
    if backend != 'cpu' or identities * num_seeds <= CPU_INSTANCES_PER_CALL:
        return num_seeds
    per_call = max(1, CPU_INSTANCES_PER_CALL // max(identities, 1))
    chunks = -(-num_seeds // per_call)  # ceil
    return -(-num_seeds // chunks)


class LatentSearch:
    """Runs a `Problem` for identity batches; compiled once per batch shape.

    Args:
      problem: the attack.
      num_seeds: instances per identity (seeds).
      key: the attack's base key (from config.seed).
      checkpoint_every: steps per jitted chunk (and between checkpoints).
      devices: shard the identities over at most this many devices (0: all).
      seed_chunk: optimise at most this many seeds of every identity at once (0:
        automatic, `auto_seed_chunk`: all of them, except on CPU where a batch is cut into
        calls of at most `CPU_INSTANCES_PER_CALL` instances). The seeds of a batch then
        run one chunk after another, each checkpointed (also when finished), then are
        rendered together and go through `select`: what bounds memory when an instance is
        large (PPA: 200 candidates of a 1024 px StyleGAN2 per identity), and what keeps
        XLA:CPU fast. The result does not depend on it, up to float rounding.
      loop: how the steps between checkpoints run: 'scan' (one jitted `lax.scan` of the
        chunk: one dispatch per chunk), 'python' (a Python loop over one jitted step) or
        'auto': 'python' on CPU, 'scan' elsewhere. On XLA:CPU (jax 0.10) the scan made the
        GMI step with FaceNet64 2.5-4.6x slower: inside the loop body about half of the
        input-gradient convolutions leave XLA:CPU's fast convolution path
        (bench/bench_attack.py; docs/testing.md). Both give the same latents up to float
        rounding.
    """

    def __init__(
        self,
        problem: Problem,
        num_seeds: int,
        key: jax.Array,
        checkpoint_every: int,
        devices: int = 0,
        seed_chunk: int = 0,
        loop: str = 'auto',
    ):
        if loop not in ('auto', 'scan', 'python'):
            raise ValueError(f"loop must be 'auto', 'scan' or 'python', got {loop!r}.")
        if loop == 'auto':
            loop = 'python' if jax.default_backend() == 'cpu' else 'scan'
        self.loop = loop
        self.problem = problem
        self.devices = sharding.check_devices(devices)
        self.num_seeds = num_seeds
        seed_chunk = int(seed_chunk or 0)
        if seed_chunk < 0:
            raise ValueError(f'seed_chunk must be >= 0 (0: automatic), got {seed_chunk}.')
        self.seed_chunk = min(seed_chunk, num_seeds)  # 0: `auto_seed_chunk` per batch.
        self.key = key
        self.chunk = max(1, int(checkpoint_every))
        self._run_chunk = jax.jit(self._chunk_fn, static_argnums=(5,))
        self._step = jax.jit(self._step_fn)
        self._init = jax.jit(self._init_fn)
        self._render = jax.jit(self._render_fn)
        self._select = jax.jit(self._select_fn)
        self._data: Any = None
        self._prepared = False

    # --- per-batch pure functions (vmapped over [B, S]) ---
    def _keys(self, identities: jax.Array, seeds: jax.Array) -> jax.Array:
        return jax.vmap(lambda i: jax.vmap(lambda s: instance_key(self.key, i, s))(seeds))(
            identities
        )

    def _init_fn(self, identities: jax.Array, seeds: jax.Array, data: Any):
        if self.problem.start is not None:
            latent = jax.vmap(self.problem.start, in_axes=(0, None, None))(identities, seeds, data)
        else:
            keys = self._keys(identities, seeds)
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

    def _update_all(self, latent, opt_state, identities, keys, t):
        """Step `t` of every [identity, seed] instance; aux: the means over the instances."""
        update = jax.vmap(
            jax.vmap(self._update, in_axes=(0, 0, None, 0, None)), in_axes=(0, 0, 0, 0, None)
        )
        latent, opt_state, aux = update(latent, opt_state, identities, keys, t)
        return latent, opt_state, jax.tree.map(jnp.mean, aux)

    def _chunk_fn(self, latent, opt_state, identities, seeds, start, length: int):
        keys = self._keys(identities, seeds)

        def body(carry, t):
            lat, opt, aux = self._update_all(*carry, identities, keys, t)
            return (lat, opt), aux

        (latent, opt_state), aux = jax.lax.scan(
            body, (latent, opt_state), start + jnp.arange(length)
        )
        return latent, opt_state, jax.tree.map(lambda a: a[-1], aux)

    def _step_fn(self, latent, opt_state, identities, seeds, t):
        """One step of every instance (the body of `_chunk_fn`'s scan) at step `t`."""
        return self._update_all(latent, opt_state, identities, self._keys(identities, seeds), t)

    def advance(self, latent, opt_state, identities, seeds, start: int, length: int, shard=None):
        """Steps `start .. start + length - 1` of every instance, as `self.loop` says.

        Returns `(latent, opt_state, aux)`, aux: the means over the instances at the last
        step. `shard`: the sharding the state is put back on after each call (XLA may hand a
        small leaf such as a step count back replicated; the next call then reuses the
        compiled one).
        """

        def place(state):
            return state if shard is None else jax.device_put(state, shard)

        if self.loop == 'scan':
            latent, opt_state, aux = self._run_chunk(
                latent, opt_state, identities, seeds, start, length
            )
            return (*place((latent, opt_state)), aux)
        aux = None
        for t in range(start, start + length):
            latent, opt_state, aux = self._step(latent, opt_state, identities, seeds, np.int32(t))
            latent, opt_state = place((latent, opt_state))
        return latent, opt_state, aux

    def lower_step(self, latent, opt_state, identities, seeds, start: int = 0):
        """One step lowered (not compiled): for XLA's cost analysis (the benchmarks)."""
        return self._step.lower(latent, opt_state, identities, seeds, np.int32(start))

    def _render_fn(self, latent, identities, seeds):
        keys = self._keys(identities, seeds)
        render = self.problem.render or (lambda lat, i, k: lat[None])
        return jax.vmap(jax.vmap(render, in_axes=(0, None, 0)), in_axes=(0, 0, 0))(
            latent, identities, jax.vmap(jax.vmap(lambda k: _purpose_keys(k)[2]))(keys)
        )

    def _select_fn(self, images, identities):
        # One key per identity, apart from every instance's (init, step, render) keys.
        keys = jax.vmap(lambda i: jax.random.fold_in(instance_key(self.key, i, 0), 3))(identities)
        return jax.vmap(self.problem.select)(images, identities, keys)

    def prepared(self) -> Any:
        """`problem.prepare()`'s data, computed on the first call (None without one)."""
        if not self._prepared:
            if self.problem.prepare is not None:
                # Its own key, apart from every instance's (`instance_key` folds identities).
                key = jax.random.fold_in(jax.random.fold_in(self.key, 2**31 - 1), 4)
                self._data = jax.jit(self.problem.prepare)(key)
            self._prepared = True
        return self._data

    # --- driver ---
    def chunk_size(self, identities: int, devices: int = 1) -> int:
        """Seeds optimised at once for a batch of `identities` over `devices` devices."""
        if self.seed_chunk:
            return self.seed_chunk
        per_device = -(-identities // max(devices, 1))
        return auto_seed_chunk(per_device, self.num_seeds, jax.default_backend())

    def run_batch(
        self,
        identities: np.ndarray,
        num_steps: int,
        ckpt_dir: str | None = None,
        progress: str = 'attack',
    ) -> tuple[Latent, np.ndarray, dict[str, float]]:
        """Optimises one identity batch; resumes from `ckpt_dir` if it holds a checkpoint.

        Returns:
          `(latents [B, S, ...], images [B, S', K, H, W, C], last_aux)` as numpy (S' = S
          unless the problem selects).
        """
        identities = np.asarray(identities, np.int32)
        mesh = sharding.data_mesh(len(identities), self.devices)
        shard = NamedSharding(mesh, PartitionSpec('data'))
        ids = jax.device_put(identities, shard)
        data = self.prepared()
        if data is not None:
            data = sharding.replicate(data, mesh)
        tic = time.perf_counter()
        size = self.chunk_size(len(identities), mesh.size)
        latents, images, auxes = [], [], []
        chunked = size < self.num_seeds
        for first in range(0, self.num_seeds, size):
            seeds = np.arange(first, min(first + size, self.num_seeds), dtype=np.int32)
            sub, label = ckpt_dir, progress
            if chunked:
                # The range in the name: another chunking never restores this state.
                name = f'seeds_{first:05d}-{seeds[-1]:05d}'
                sub = ckpt_dir and os.path.join(ckpt_dir, name)
                label = f'{progress} seeds {first}-{seeds[-1]}'
            latent, image, aux = self._run_seeds(
                ids, shard, sharding.replicate(seeds, mesh), data, num_steps, sub, label, chunked
            )
            latents.append(latent)
            images.append(image)
            auxes.append((len(seeds), aux))
        latent = jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *latents)
        image = jnp.concatenate(images, axis=1) if chunked else images[0]
        if self.problem.select is not None:
            image = self._select(image, ids)
        # Each chunk's aux is a mean over its instances: the batch's is their weighted mean.
        last = {k: sum(n * float(a[k]) for n, a in auxes) / self.num_seeds for k in auxes[0][1]}
        last['seconds'] = time.perf_counter() - tic
        # Gathered from every process (identities are sharded over all their devices).
        return distributed.to_host(latent), distributed.to_host(image), last

    def _run_seeds(self, ids, shard, seeds, data, num_steps, ckpt_dir, progress, keep_final):
        """Optimises and renders the instances `seeds` of every identity in `ids`.

        `keep_final`: checkpoint the finished state too (a chunk of seeds whose batch goes
        on to other chunks), so a rerun does not optimise it again; those checkpoints also
        hold the last step's aux, which a finished chunk then returns.
        """
        latent, opt_state = self._init(ids, seeds, data)
        step = 0
        aux: dict[str, Any] = {}
        if keep_final:  # The aux's structure, without computing a step.
            shapes = jax.eval_shape(self._step_fn, latent, opt_state, ids, seeds, 0)[2]
            aux = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)

        def saved(latent, opt_state, aux):
            """What a checkpoint holds (the aux only with `keep_final`)."""
            state = {'latent': latent, 'opt_state': opt_state}
            return {**state, 'aux': aux} if keep_final else state

        mngr = checkpoint.manager(ckpt_dir, max_to_keep=1) if ckpt_dir else None
        if mngr is not None and mngr.latest_step() is not None:
            target = distributed.to_host(saved(latent, opt_state, aux))
            restored, step = checkpoint.restore_latest(mngr, target)
            latent, opt_state = restored['latent'], restored['opt_state']
            aux = restored.get('aux', aux)
            logging.info('Resuming identity batch at step %d', step)
        latent = jax.device_put(latent, shard)
        opt_state = jax.device_put(opt_state, shard)
        bar = tqdm(
            total=num_steps,
            initial=step,
            desc=progress,
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not distributed.is_main(),
        )
        while step < num_steps:
            length = min(self.chunk, num_steps - step)
            latent, opt_state, aux = self.advance(
                latent, opt_state, ids, seeds, step, length, shard
            )
            step += length
            if mngr is not None and (step < num_steps or keep_final):
                checkpoint.save_state(mngr, step, saved(latent, opt_state, aux))
            bar.update(length)
            bar.set_postfix({k: f'{float(v):.3f}' for k, v in aux.items()})
        bar.close()
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()
        return latent, self._render(latent, ids, seeds), aux
