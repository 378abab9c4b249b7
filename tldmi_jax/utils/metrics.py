"""Metric writers: `metrics.jsonl` (one JSON object per line) and TensorBoard events.

The file holds one record per (step, keys): writing a record whose step is already recorded
with the same keys (a rerun of a finished command, or a run killed right after its last
record) is a no-op. A last line torn by a kill is dropped; a damaged line elsewhere stops
the reader with the file, the line number and the fix.
"""

import json
import logging as logging_std
import math
import os
from typing import Any

from absl import logging

from tldmi_jax.utils import atomic, distributed
from tldmi_jax.utils import tensorboard as tb_events


def _scalar(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class MetricsError(ValueError):
    """`metrics.jsonl` holds a damaged line (not the torn last one); the message names it."""


def _key(record: dict[str, Any]) -> tuple[Any, frozenset[str]]:
    return record.get('step'), frozenset(record)


class MetricWriter:
    """Appends `{"step": N, **metrics}` lines to `workdir/metrics.jsonl` and TB events.

    A record whose step and keys are already in the file is not written again. In a
    multi-process run only process 0 writes (the others' writers do nothing).
    """

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._written: set = set()
        self._tb = None
        self._active = distributed.is_main()
        if not self._active:
            return
        os.makedirs(workdir, exist_ok=True)
        _drop_torn_tail(self.path)  # A kill mid-append must not glue two records together.
        self._written = {_key(r) for r in read_metrics(workdir)}
        if tensorboard:
            self._tb = tb_events.ScalarWriter(os.path.join(workdir, 'tensorboard'))

    def write(self, step: int, metrics: dict[str, Any], log: bool = True) -> None:
        record = {'step': int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        if not self._active:
            return
        if _key(record) in self._written:
            logging.debug('step %d: already in %s, not written again', step, self.path)
            return
        self._written.add(_key(record))
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

    Raises:
      MetricsError: another line is not a JSON object (the file and line are named).
    """
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    with open(path, errors='replace') as f:
        lines = f.read().split('\n')
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            record, reason = None, getattr(e, 'msg', str(e))
        else:
            reason = 'not a JSON object'
        if not isinstance(record, dict):
            raise MetricsError(
                f'{path}, line {number}: damaged record ({reason}: {line[:40]!r}); delete or '
                'repair that line (or restore the file), then rerun the same command'
            )
        records.append(record)
    return records


def truncate(workdir: str, step: int) -> None:
    """Drops records past `step` from `workdir/metrics.jsonl` (a run resuming at `step`).

    `step=-1` drops every record (a run starting again from scratch). The file is
    rewritten atomically.
    """
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path) or not distributed.is_main():
        return
    records = [r for r in read_metrics(workdir) if r.get('step', 0) <= step]
    with atomic.open_for_write(path) as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
