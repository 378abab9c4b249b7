"""Result files: JSON with NaN as null, CSV from dict rows (atomic writes)."""

import csv
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tldmi_jax.utils import atomic


def jsonable(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, payload: dict[str, Any]) -> str:
    """Writes `payload` (NaN as null) as sorted, indented JSON; returns the path."""
    atomic.write_json(path, {k: jsonable(v) for k, v in payload.items()}, sort_keys=True)
    return path


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> str:
    """Writes dict rows (columns of the first row) as CSV; returns the path."""
    with atomic.open_for_write(path, newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows({k: jsonable(v) for k, v in row.items()} for row in rows)
    return path
