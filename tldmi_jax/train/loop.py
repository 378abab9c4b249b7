"""The training loop of every trainer: classifier, GAN prior and distilled student.

A trainer builds its state and its jitted step(s); `TrainLoop` does the rest:

    train = loop.TrainLoop(workdir, sched, desc='train', log_every=50, checkpoint_every=None)
    state = train.resume(state)  # The latest checkpoint in `workdir`, if any.
    state = train.run(state, batches, step_fn, mesh, hooks=[loop.Periodic(100, evaluate)])
    ... the trainer's own export, then `train.finish(summary)`.

`run` takes the batches from the resumed step on (`divmod(step, steps_per_epoch)`: the
epoch and the batch within it), calls `step_fn(state, batch, step) -> (state, metrics)`
once per batch (it may run several jitted steps, as the GAN's D and G steps), keeps the
metrics on device until a log step, and then writes one record to `metrics.jsonl` (their
means, `train/images_per_sec`, `train/epoch` and the trainer's `extras(step)`) and shows
the losses in the progress bar. After logging come the periodic hooks (evaluation, sample
grids), then the checkpoint. Losses are checked for NaN/inf when fetched and the parameters
before every checkpoint (`utils.loop.FiniteGuard`), so a bad step stops the run and the last
good checkpoint is kept.
"""

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from tldmi_jax.data import pipeline
from tldmi_jax.utils import atomic, checkpoint, distributed, metrics, sharding
from tldmi_jax.utils import loop as steps

Batches = Callable[[int, int], Iterable[dict[str, np.ndarray]]]
StepFn = Callable[[Any, Any, int], tuple[Any, dict[str, jax.Array]]]


def schedule(config: ml_collections.ConfigDict, num_examples: int, what: str) -> steps.Schedule:
    """`config.epochs` (or `config.total_steps`) of full `config.batch_size` batches."""
    return steps.make_schedule(
        num_examples, config.batch_size, config.epochs, config.get('total_steps'), what
    )


def shuffled_batches(
    source: Any,
    indices: np.ndarray,
    batch_size: int,
    *,
    preprocess: Callable[[np.ndarray], np.ndarray],
    seed: int,
    keys: tuple[str, ...] = ('image', 'label'),
) -> Batches:
    """`batches(epoch, start_batch)`: an epoch's full batches in the order of (seed, epoch).

    Args:
      source: random access to `{'image': uint8 [H, W, C], 'label': int}` records.
      indices: int [N], the records trained on.
      batch_size: examples per batch (a last partial batch is dropped).
      preprocess: `uint8 [H, W, C] -> float32 [h, w, c]`.
      seed: the run's data seed.
      keys: the fields each batch keeps (`image` float32 [B, h, w, c], `label` int32 [B]).
    """

    def batches(
        epoch: int, start_batch: int, rows: slice = slice(None)
    ) -> Iterator[dict[str, np.ndarray]]:
        for batch in pipeline.epoch_batches(
            source,
            indices,
            batch_size,
            preprocess=preprocess,
            seed=seed,
            epoch=epoch,
            shuffle=True,
            drop_remainder=True,
            start_batch=start_batch,
            rows=rows,
        ):
            yield {k: batch[k] for k in keys}

    return batches


@dataclasses.dataclass(frozen=True)
class Periodic:
    """`fn(step, state) -> state` after the steps `Schedule.due` names (0/None: each epoch)."""

    every: int | None
    fn: Callable[[int, Any], Any]


def postfix(summary: dict[str, float]) -> dict[str, str]:
    """The progress bar's fields: the losses, top-1 accuracy or agreement, images/sec."""
    shown = {k: f'{v:.4g}' for k, v in summary.items() if k.endswith('loss') or '@1' in k}
    shown['img/s'] = f'{summary["train/images_per_sec"]:.0f}'
    return shown


class TrainLoop:
    """Runs a trainer's steps with logging, hooks, NaN/inf checks and checkpoints.

    Args:
      workdir: where `checkpoints/`, `metrics.jsonl` and `results.json` go.
      schedule: steps per epoch and in total (`schedule(config, ...)`).
      desc: the progress bar's label.
      log_every: steps between log records (and the last step).
      checkpoint_every: steps between checkpoints (and the last step); 0/None: each epoch.
      keep: checkpoints kept.
      params: `params(state)`, the tree checked for NaN/inf before each checkpoint.

    Attributes:
      schedule: steps per epoch and in total.
      mngr: the orbax CheckpointManager of `workdir/checkpoints` (after `resume`).
      writer: the `metrics.jsonl` writer of `workdir` (after `resume`; open until `finish`).
      step: the last step taken (or restored).
      last: the last logged record (empty until a log step).
    """

    def __init__(
        self,
        workdir: str,
        schedule: steps.Schedule,
        *,
        desc: str,
        log_every: int,
        checkpoint_every: int | None,
        keep: int = 2,
        params: Callable[[Any], Any] = lambda state: state.params,
    ):
        self.workdir, self.schedule, self.desc = workdir, schedule, desc
        self.log_every, self.keep, self.params = int(log_every), keep, params
        self.checkpoint_every = schedule.every(checkpoint_every)
        self.mngr: Any = None
        self.writer: metrics.MetricWriter | None = None
        self.step = 0
        self.last: dict[str, Any] = {}
        self._guard = steps.FiniteGuard()
        self._pending: dict[str, list[jax.Array]] = {}  # Metrics of the steps since the log.

    def resume(self, state: Any) -> Any:
        """Restores the latest checkpoint of `workdir` into `state`'s structure (if any).

        Also opens the metric writer (after `metrics.jsonl` is trimmed to the restored step).
        """
        self.mngr, state, _ = checkpoint.resume(self.workdir, state, self.keep)
        self.writer = metrics.MetricWriter(self.workdir)
        self.step = int(state.step)
        return state

    def check_finite(self, step: int, params: Any = None) -> None:
        """Raises `NonFiniteError` if a pending loss (or `params`) is NaN/inf."""
        self._guard.check(self._pending, step, self.mngr, params=params)

    def run(
        self,
        state: Any,
        batches: Batches,
        step_fn: StepFn,
        mesh: Any,
        *,
        hooks: Iterable[Periodic] = (),
        extras: Callable[[int], dict[str, Any]] | None = None,
    ) -> Any:
        """Trains from `state.step` to the last step; returns the final state.

        Args:
          state: the (resumed, replicated) state; `state.step` counts loop steps.
          batches: `batches(epoch, start_batch)` yields host batches of one epoch; in a
            multi-process run `batches(epoch, start_batch, rows)` yields this process's
            `rows` of each (`shuffled_batches` does both).
          step_fn: `step_fn(state, batch, step)` with the batch sharded over `mesh` and
            `step` the host count of steps before it; returns `(state, metrics)`, the
            metrics (scalars on device) of this batch.
          mesh: the 'data' mesh the batch is split over.
          hooks: periodic work after logging and before the checkpoint of a step.
          extras: `extras(step)` adds host-computed fields to each log record.
        """
        sched, step = self.schedule, int(state.step)
        hooks = [(sched.every(h.every), h.fn) for h in hooks]
        epoch_batches = batches
        if distributed.multi():
            # Each process loads its rows of every batch; the global batch is the same.
            rows = distributed.process_rows(sharding.batch_sharding(mesh), sched.batch_size)
            epoch_batches = functools.partial(batches, rows=rows)

        bar = tqdm(
            total=sched.total_steps,
            initial=step,
            desc=self.desc,
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not distributed.is_main(),
        )
        tic, seen = time.perf_counter(), 0
        try:
            while step < sched.total_steps:
                epoch, start_batch = divmod(step, sched.steps_per_epoch)
                for batch in epoch_batches(epoch, start_batch):
                    seen += len(jax.tree.leaves(batch)[0]) * distributed.process_count()
                    global_batch = sharding.from_process_rows(batch, mesh, sched.batch_size)
                    state, step_metrics = step_fn(state, global_batch, step)
                    step = self.step = step + 1
                    for k, v in step_metrics.items():
                        self._pending.setdefault(k, []).append(v)
                    bar.update(1)
                    if sched.due(step, self.log_every):
                        rate = seen / max(time.perf_counter() - tic, 1e-9)
                        bar.set_postfix(postfix(self._log(step, rate, extras)))
                        tic, seen = time.perf_counter(), 0
                    for every, fn in hooks:
                        if sched.due(step, every):
                            state = fn(step, state)
                    if sched.due(step, self.checkpoint_every):
                        self.check_finite(step, self.params(state))
                        checkpoint.save_state(self.mngr, step, state)
                    if step >= sched.total_steps:
                        break
        finally:
            bar.close()
        self.mngr.wait_until_finished()
        self.mngr.close()
        return state

    def _log(self, step: int, rate: float, extras) -> dict[str, Any]:
        """Fetches the pending metrics (checking them), writes their means; returns them."""
        self.check_finite(step)
        summary = {k: float(np.mean(jax.device_get(v))) for k, v in self._pending.items()}
        self._guard.record(step, summary)
        summary['train/images_per_sec'] = rate
        summary['train/epoch'] = step / self.schedule.steps_per_epoch
        if extras is not None:
            summary.update(extras(step))
        self.writer.write(step, summary, log=False)  # Shown in the progress bar.
        self._pending, self.last = {}, summary
        return summary

    def finish(self, summary: dict[str, Any], *, record: bool = True) -> None:
        """Writes the final `summary` (to `metrics.jsonl` too if `record`) and results.json."""
        if record:
            self.writer.write(self.step, summary)
        self.writer.close()
        if distributed.is_main():
            atomic.write_json(os.path.join(self.workdir, 'results.json'), summary)
        distributed.barrier(f'finish:{self.workdir}')
