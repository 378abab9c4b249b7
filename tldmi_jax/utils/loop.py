"""Step bookkeeping shared by the trainers (classifier, GAN, distillation)."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Steps per epoch and in total; `every(n)` turns a 0/None interval into one epoch."""

    steps_per_epoch: int
    total_steps: int

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
    return Schedule(steps_per_epoch, int(total_steps or epochs * steps_per_epoch))
