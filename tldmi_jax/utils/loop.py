"""Step bookkeeping shared by the trainers (classifier, GAN, distillation)."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Steps per epoch and in total; `every(n)` turns a 0/None interval into one epoch."""

    steps_per_epoch: int
    total_steps: int
    batch_size: int = 0  # The global batch (0: not given).

    def every(self, interval: int | None) -> int:
        return int(interval) if interval else self.steps_per_epoch

    def due(self, step: int, interval: int) -> bool:
        """True every `interval` steps and at the last step."""
        return step % interval == 0 or step == self.total_steps


def make_schedule(
    num_examples: int, batch_size: int, epochs: int, total_steps: int | None = 0, what='images'
) -> Schedule:
    """Full batches per epoch (drop remainder); `total_steps` overrides `epochs` when > 0.

    Raises:
      ValueError: if the batch is larger than the data.
    """
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'Batch size {batch_size} exceeds the {num_examples} {what}.')
    return Schedule(steps_per_epoch, int(total_steps or epochs * steps_per_epoch), batch_size)


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or inf loss or parameter; the message says where."""


class FiniteGuard:
    """Stops a trainer at the first NaN/inf loss without a device sync per step.

    The trainers keep each step's metrics on device (`acc`: key -> one value per step, or
    fewer for keys logged less often) and fetch them only at log steps. `check` runs on the
    pending values at those fetches and before every checkpoint save (where the state is
    copied to the host anyway), so a checkpoint with non-finite parameters is never written;
    `record` keeps the last finite summary for the error message.
    """

    def __init__(self):
        self.last_step: int | None = None
        self.last: dict[str, float] = {}

    def record(self, step: int, summary: dict[str, float]) -> None:
        """Remembers the last logged (finite) metrics."""
        self.last_step, self.last = step, dict(summary)

    def check(self, acc: dict[str, list], step: int, mngr: Any = None, params: Any = None):
        """Raises NonFiniteError if a pending loss (or, if given, a parameter) is not finite.

        Args:
          acc: per-key lists of per-step metrics for the steps up to `step`.
          step: the step just taken.
          mngr: the run's orbax CheckpointManager (its pending saves finish first, and its
            latest step is named as the checkpoint that is kept).
          params: a parameter tree to check as well (before saving it).
        """
        problem = _first_nonfinite_loss(acc, step)
        if problem is None and params is not None and not _all_finite(params):
            problem = f'non-finite parameters after step {step}'
        if problem is None:
            return
        kept = 'no checkpoint was saved'
        if mngr is not None:
            mngr.wait_until_finished()
            if mngr.latest_step() is not None:
                kept = f'the last good checkpoint (step {mngr.latest_step()}) is kept'
        if self.last_step is None:
            last = 'no finite metrics were logged'
        else:
            shown = ', '.join(
                f'{k}={v:.4g}' for k, v in self.last.items() if 'loss' in k or '@' in k
            )
            last = f'last finite metrics (step {self.last_step}): {shown}'
        raise NonFiniteError(
            f'{problem}; {last}; {kept}. Lower the learning rate (--config.optim.lr) and '
            'rerun with --config.overwrite=True or a new --workdir'
        )


def _first_nonfinite_loss(acc: dict[str, list], step: int) -> str | None:
    """'non-finite loss at step N (key=value)' for the earliest bad loss, or None."""
    longest = max((len(v) for v in acc.values()), default=0)
    found = None
    for key, values in acc.items():
        if 'loss' not in key or not values:
            continue
        host = np.asarray(jax.device_get(values), np.float64).reshape(len(values), -1)
        bad = np.flatnonzero(~np.isfinite(host).all(axis=1))
        if not bad.size:
            continue
        # Keys with one value per step map to their step; sparser ones to the window's end.
        at = step - len(values) + 1 + int(bad[0]) if len(values) == longest else step
        if found is None or at < found[0]:
            found = (at, key, float(host[bad[0]].ravel()[0]))
    if found is None:
        return None
    at, key, value = found
    return f'non-finite loss at step {at} ({key}={value})'


def _all_finite(tree: Any) -> bool:
    """Reduced where the arrays live: one boolean crosses to the host, not the tree.

    One compiled reduction for the whole tree (eager per-leaf ops would compile once per
    leaf shape: seconds for a small model).
    """
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return bool(_finite(leaves)) if leaves else True


@jax.jit
def _finite(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()
