"""The optimizers of the classifier trainer and the distilled students (PyTorch recipes)."""

from collections.abc import Sequence

import ml_collections
import optax


def make_base_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """PyTorch-style SGD or Adam: `g + wd * p`, then (Nesterov) momentum or Adam.

    Args:
      optim: `name` ('sgd' default, or 'adam'), `lr` (a float or an optax schedule),
        `weight_decay`; SGD's `momentum` and `nesterov`; Adam's `b1`, `b2`.

    Raises:
      ValueError: for another optimizer name.
    """
    name = optim.get('name', 'sgd')
    if name == 'sgd':
        return optax.chain(
            optax.add_decayed_weights(optim.weight_decay),
            optax.sgd(optim.lr, momentum=optim.momentum or None, nesterov=optim.nesterov),
        )
    if name == 'adam':
        return optax.chain(
            optax.add_decayed_weights(optim.weight_decay),
            optax.adam(optim.lr, b1=optim.get('b1', 0.9), b2=optim.get('b2', 0.999)),
        )
    raise ValueError(f'Unknown optimizer {name!r}; use sgd or adam.')


def multistep_boundaries(
    milestones: Sequence[int], gamma: float, steps_per_epoch: int
) -> dict[int, float]:
    """torch's `MultiStepLR(milestones, gamma)`, stepped once per epoch, in optimizer steps.

    The lr is multiplied by `gamma` from the first step of each milestone epoch on: step `s`
    (0-based, `s // steps_per_epoch` its epoch) runs at `lr * gamma ** #{m : m * spe <= s}`.

    Args:
      milestones: strictly increasing epochs >= 1.
      gamma: the factor, > 0.
      steps_per_epoch: optimizer steps per epoch, >= 1.

    Returns:
      `{milestone * steps_per_epoch: gamma}`, for `optax.piecewise_constant_schedule`.

    Raises:
      ValueError: milestones that are not increasing integers >= 1, or gamma <= 0.
    """
    milestones = tuple(milestones)
    if any(int(m) != m or m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise ValueError(
            f'optim.milestones must be strictly increasing epochs >= 1, got {milestones}.'
        )
    if not gamma > 0:
        raise ValueError(f'optim.gamma must be > 0, got {gamma}.')
    return {int(m) * int(steps_per_epoch): float(gamma) for m in milestones}


def learning_rate(optim: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.ScalarOrSchedule:
    """`optim.lr`, decayed by `optim.gamma` at each of `optim.milestones` (epochs).

    Args:
      optim: `lr`, `milestones` (epochs; empty or absent: a constant lr) and `gamma`.
      steps_per_epoch: optimizer steps per epoch.

    Returns:
      The float `optim.lr` itself when there are no milestones (so the optimizer state is
      the same as before schedules existed), else an optax schedule `step -> lr`.

    Raises:
      ValueError: see `multistep_boundaries`.
    """
    milestones = tuple(optim.get('milestones') or ())
    if not milestones:
        return optim.lr
    boundaries = multistep_boundaries(milestones, optim.get('gamma', 0.1), steps_per_epoch)
    return optax.piecewise_constant_schedule(optim.lr, boundaries)


def lr_at(lr: optax.ScalarOrSchedule, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based) for a float or a schedule."""
    return float(lr(step)) if callable(lr) else float(lr)
