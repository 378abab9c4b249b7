"""Metric writers: `metrics.jsonl` (one JSON object per line) and TensorBoard events."""

import json
import logging as logging_std
import math
import os
from typing import Any

from absl import logging

from tldmi_jax.utils import atomic


def _scalar(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class MetricWriter:
    """Appends `{"step": N, **metrics}` lines to `workdir/metrics.jsonl` and TB events."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, 'metrics.jsonl')
        _drop_torn_tail(self.path)  # A kill mid-append must not glue two records together.
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

    def write(self, step: int, metrics: dict[str, Any], log: bool = True) -> None:
        record = {'step': int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        if self._tb is not None:
            for k, v in record.items():
                if k != 'step' and isinstance(v, float):
                    self._tb.add_scalar(k.replace('@', '_at'), v, int(step))
        if log:
            logging.info('step %d: %s', step, {k: v for k, v in record.items() if k != 'step'})

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class _DropLibraryInfo(logging_std.Filter):
    """Drops INFO records logged from inside orbax (several per checkpoint)."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return record.levelno > logging_std.INFO or f'{os.sep}orbax{os.sep}' not in record.pathname


def quiet_libraries() -> None:
    """Keeps absl INFO logs for our own messages while silencing orbax's chatter."""
    absl_logger = logging.get_absl_logger()
    if not any(isinstance(f, _DropLibraryInfo) for f in absl_logger.filters):
        absl_logger.addFilter(_DropLibraryInfo())


def _drop_torn_tail(path: str) -> None:
    """Cuts a last line that has no newline (an append interrupted by a kill)."""
    if not os.path.exists(path):
        return
    with open(path, 'rb+') as f:
        data = f.read()
        if data and not data.endswith(b'\n'):
            f.truncate(data.rfind(b'\n') + 1)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """Reads back every record of `workdir/metrics.jsonl` (empty list if none).

    A last line without its newline (torn by a kill mid-append) is not a record and is
    skipped.
    """
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split('\n')
    return [json.loads(line) for line in lines[:-1] if line.strip()]


def truncate(workdir: str, step: int) -> None:
    """Drops records past `step` from `workdir/metrics.jsonl` (a run resuming at `step`).

    `step=-1` drops every record (a run starting again from scratch). The file is
    rewritten atomically.
    """
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return
    records = [r for r in read_metrics(workdir) if r.get('step', 0) <= step]
    with atomic.open_for_write(path) as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
