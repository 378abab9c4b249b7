"""DP-SGD (Abadi et al., 2016): per-example clipping, Gaussian noise, and its accountant.

Each step computes per-example gradients with `jax.vmap(jax.grad(...))` over the batch,
clips each to L2 norm C (`g * C / max(C, ||g||)`, as `mi-defense/dp_training.py`), sums
them, adds `N(0, (sigma C)^2)` noise to every coordinate and divides by the batch size;
the optimizer then runs as usual (weight decay and momentum act on the privatised
gradient). Only trainable parameters take part: under `tldmi+dpsgd` the norm is taken
over the fine-tuned leaves and only they are noised (frozen leaves get zero updates and
are never touched by private data).

BatchNorm couples the examples of a batch (its statistics are shared), so a per-example
gradient of a train-mode BN network is not a function of one example alone and clipping
would not bound one example's influence (Opacus refuses BatchNorm for this reason and
suggests GroupNorm). Here every BatchNorm runs in inference mode during DP steps: it
normalises with its running statistics (pretrained, or the initial 0/1), which are never
updated from private data; its scale and bias train as ordinary (clipped, noised)
parameters. Dropout stays active, with an independent key per example.
(`mi-defense` clips gradients of a train-mode BN network, which is not DP.)

Accounting uses `dp_accounting` (RDP by default, or PLD) for `steps` compositions of the
Poisson-subsampled Gaussian mechanism with rate `q = batch_size / N`. The input pipeline
draws fixed-size batches from a shuffled permutation per epoch instead of Poisson samples;
reporting the Poisson epsilon for shuffled batches is the common approximation (as in
Abadi et al. and TF Privacy's tutorials) but not a formal guarantee for this sampler.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh

from tldmi_jax.models.layers import BatchNorm
from tldmi_jax.utils import sharding

ACCOUNTANTS = ('rdp', 'pld')


def check(clip_norm: float, noise_multiplier: float, delta: float, accountant: str) -> None:
    """Validates the DP-SGD hyperparameters.

    Raises:
      ValueError: for C <= 0, sigma < 0, delta outside (0, 1) or an unknown accountant.
    """
    if not clip_norm > 0:
        raise ValueError(f'defense.dp_clip_norm must be > 0, got {clip_norm}.')
    if not noise_multiplier >= 0:
        raise ValueError(f'defense.dp_noise_multiplier must be >= 0, got {noise_multiplier}.')
    if not 0 < delta < 1:
        raise ValueError(f'defense.dp_delta must be in (0, 1), got {delta}.')
    if accountant not in ACCOUNTANTS:
        raise ValueError(f'defense.dp_accountant must be one of {ACCOUNTANTS}, got {accountant!r}.')


def bn_inference_interceptor(next_fun, args, kwargs, context):
    """An `nn.intercept_methods` interceptor running every BatchNorm in inference mode."""
    if isinstance(context.module, BatchNorm) and context.method_name == '__call__':
        if 'train' in kwargs:
            kwargs = {**kwargs, 'train': False}
        elif len(args) >= 2:
            args = (args[0], False, *args[2:])
    return next_fun(*args, **kwargs)


def per_example_grads(
    loss_fn: Callable[..., Any], params: Any, *batched: Any, mesh: Mesh | None = None
) -> Any:
    """`vmap(grad(loss_fn))` over the leading axis of `batched`.

    Args:
      loss_fn: `(params, *example) -> (loss, aux)` for one example.
      params: the differentiated pytree (shared by all examples).
      *batched: pytrees with a leading batch axis B.
      mesh: the 'data' mesh the batch is sharded over; each device then computes its own
        examples (`sharding.per_device`: XLA's SPMD partitioning of this vmap gives wrong
        convolution gradients).

    Returns:
      `(grads, aux)`: grads like `params` with a leading axis B, aux batched likewise.
    """
    grad_fn = jax.grad(loss_fn, has_aux=True)
    per_example = jax.vmap(grad_fn, in_axes=(None, *([0] * len(batched))))
    return sharding.per_device(per_example, mesh, len(batched))(params, *batched)


def clip_factors(per_example: Any, clip_norm: float) -> tuple[jax.Array, jax.Array]:
    """Per-example `(C / max(C, ||g_i||), ||g_i||)` over all leaves; leading axis B -> [B]."""
    leaves = jax.tree.leaves(per_example)
    sq = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in leaves)
    norms = jnp.sqrt(sq)
    return clip_norm / jnp.maximum(clip_norm, norms), norms


def privatize(
    per_example: Any, *, clip_norm: float, noise_multiplier: float, key: jax.Array
) -> tuple[Any, dict[str, jax.Array]]:
    """The DP-SGD gradient `(sum_i clip(g_i) + N(0, (sigma C)^2 I)) / B`.

    Args:
      per_example: per-example gradients of the trainable parameters, leading axis B.
      clip_norm: C, the per-example L2 bound.
      noise_multiplier: sigma (0: clipping only, no privacy).
      key: PRNG key for the noise.

    Returns:
      `(grads, metrics)`: grads like one example's gradient; metrics with the mean
      per-example norm and the fraction of clipped examples.
    """
    factors, norms = clip_factors(per_example, clip_norm)
    leaves, treedef = jax.tree.flatten(per_example)
    batch = leaves[0].shape[0] if leaves else 1
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for g, k in zip(leaves, keys, strict=False):
        summed = jnp.tensordot(factors, g, axes=1)
        noise = noise_multiplier * clip_norm * jax.random.normal(k, summed.shape, summed.dtype)
        out.append((summed + noise) / batch)
    metrics = {
        'train/dp_grad_norm': jnp.mean(norms),
        'train/dp_clipped': jnp.mean((norms > clip_norm).astype(jnp.float32)),
    }
    return jax.tree.unflatten(treedef, out), metrics


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = 'rdp',
) -> float:
    """Epsilon of `steps` Poisson-subsampled Gaussian steps at `delta` (dp_accounting).

    Args:
      noise_multiplier: sigma (0 gives infinity).
      sample_rate: q = batch_size / N, in (0, 1].
      steps: number of DP-SGD steps taken (0 gives 0).
      delta: target delta.
      accountant: 'rdp' or 'pld'.

    Returns:
      The epsilon the accountant reports.
    """
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    import dp_accounting  # Lazy: 1.7 s of imports (scipy.stats/signal) only DP-SGD needs.

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        int(steps),
    )
    if accountant == 'rdp':
        acc = dp_accounting.rdp.RdpAccountant()
    else:
        acc = dp_accounting.pld.PLDAccountant()
    # RDP warns at every call that a few fractional orders do not converge (they are then
    # left out of the minimum over orders); keep those warnings out of the training log.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        acc.compose(event)
        return float(acc.get_epsilon(delta))
    finally:
        logging.set_verbosity(verbosity)


def apply_one(
    model: nn.Module,
    params: Any,
    batch_stats: Any,
    image: jax.Array,
    rng: jax.Array,
    capture: Any = False,
) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """Runs the model on one example [H, W, C] with BatchNorm in inference mode.

    Returns:
      `((features [1, d], logits [1, K]), state)` with the 'intermediates' collection.
    """
    variables = {'params': params, 'batch_stats': batch_stats}
    with nn.intercept_methods(bn_inference_interceptor):
        return model.apply(
            variables,
            image[None],
            train=True,
            rngs={'dropout': rng},
            mutable=['intermediates'],
            capture_intermediates=capture,
        )
