"""Label smoothing as a defense: negative smoothing with PPA's warm-up, or positive smoothing.

Targets are `(1 - alpha) * onehot + alpha / K` (K classes), the loss is the cross-entropy
against them. Struppek et al. ("Be Careful What You Smooth For", ICLR 2024) show that a
negative factor (alpha = -0.05) hinders model inversion; `LukasStruppek/Plug-and-Play-Attacks`
trains such targets with a warm-up (`train_model.py:ls_scheduler`, wired into `fit()` only
since PR #14): alpha = 0 for epochs < 50, a linear ramp for 50 <= epoch < 75, then alpha.
Positive factors (alpha > 0, torch's `CrossEntropyLoss(label_smoothing=alpha)`) get no
schedule, as there.

The original ramp is `alpha * (epoch + 1 - 50) / (num_epochs - 50)`: with PPA's 100 epochs it
reaches only alpha / 2 at epoch 74 and then jumps to alpha. By default the ramp here reaches
alpha at the end epoch (`(epoch + 1 - start) / (end - start)`, the "ramp to 75" that the
authors describe); `original_ramp=True` reproduces the code's slope.
"""

import jax
import jax.numpy as jnp
import optax


def check(alpha: float, start_epoch: int, end_epoch: int) -> None:
    """Validates the smoothing hyperparameters.

    Raises:
      ValueError: if alpha >= 1, or a negative alpha has a bad warm-up window.
    """
    if not alpha < 1.0:
        raise ValueError(f'defense.ls_alpha must be < 1 (got {alpha}); -0.05 is negative LS.')
    if alpha < 0 and not 0 <= start_epoch < end_epoch:
        raise ValueError(
            'Negative label smoothing needs 0 <= defense.ls_start_epoch < defense.ls_end_epoch, '
            f'got {start_epoch} and {end_epoch}.'
        )


def alpha_at(
    epoch: jax.Array | int,
    alpha: float,
    *,
    start_epoch: int = 50,
    end_epoch: int = 75,
    num_epochs: float | None = None,
    original_ramp: bool = False,
) -> jax.Array:
    """The smoothing factor in (0-based) `epoch`.

    Args:
      epoch: the current epoch index, an int or a traced integer scalar.
      alpha: the target factor; >= 0 is constant (no schedule).
      start_epoch: negative alpha is 0 before this epoch.
      end_epoch: negative alpha is constant from this epoch on.
      num_epochs: the run's length in epochs; needed only with `original_ramp`.
      original_ramp: use PPA's slope `1 / (num_epochs - start_epoch)`.

    Returns:
      A float32 scalar.
    """
    if alpha >= 0:
        return jnp.float32(alpha)
    if original_ramp:
        if num_epochs is None or num_epochs <= start_epoch:
            raise ValueError(
                f'original_ramp needs num_epochs > start_epoch, got {num_epochs} and {start_epoch}.'
            )
        span = num_epochs - start_epoch
    else:
        span = end_epoch - start_epoch
    epoch = jnp.asarray(epoch, jnp.float32)
    ramp = alpha * (epoch + 1.0 - start_epoch) / span
    return jnp.where(epoch < start_epoch, 0.0, jnp.where(epoch < end_epoch, ramp, alpha))


def smoothed_targets(labels: jax.Array, num_classes: int, alpha: jax.Array | float) -> jax.Array:
    """`(1 - alpha) * onehot + alpha / K`; labels [B] int -> [B, K] float32."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return (1.0 - alpha) * onehot + alpha / num_classes


def cross_entropy(logits: jax.Array, labels: jax.Array, alpha: jax.Array | float) -> jax.Array:
    """Per-example cross-entropy against smoothed targets; logits [B, K] -> [B]."""
    targets = smoothed_targets(labels, logits.shape[-1], alpha)
    return optax.softmax_cross_entropy(logits, targets)
