"""Evaluation outputs: the metrics table, the pairs grid and report.md."""

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tldmi_jax.reporting import grids
from tldmi_jax.reporting.files import jsonable
from tldmi_jax.utils import atomic

# Order and labels of the report table.
METRIC_ROWS = (
    ('attack/acc@1', 'Attack accuracy top-1', 'attack/acc@1_std'),
    ('attack/acc@5', 'Attack accuracy top-5', 'attack/acc@5_std'),
    ('attack/knn_dist', 'KNN distance (eval features, squared L2)', None),
    ('attack/delta_eval', 'delta_eval (eval features, squared L2; PPA)', None),
    ('attack/delta_face', 'delta_face (FaceNet embedding, squared L2; PPA)', None),
    ('attack/fid', 'FID (reconstructions vs private)', None),
    ('attack/kid', 'KID', None),
    ('attack/precision', 'Precision (k=3)', None),
    ('attack/recall', 'Recall (k=3)', None),
    ('attack/density', 'Density (k=3)', None),
    ('attack/coverage', 'Coverage (k=3)', None),
    ('target/natural_acc', 'Target natural accuracy (private test)', None),
)


def _fmt(value: Any) -> str:
    value = jsonable(value)
    if value is None:
        return 'n/a'
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value)


def format_table(metrics: dict[str, Any]) -> str:
    """A markdown table of the reported metrics (`mean ± std` for attack accuracy)."""
    lines = ['| metric | key | value |', '|---|---|---|']
    for key, label, std_key in METRIC_ROWS:
        if key not in metrics:
            continue
        value = _fmt(metrics[key])
        if std_key and jsonable(metrics.get(std_key)) is not None and value != 'n/a':
            value += f' ± {_fmt(metrics[std_key])}'
        lines.append(f'| {label} | `{key}` | {value} |')
    return '\n'.join(lines)


def save_pairs_grid(
    path: str,
    recon: np.ndarray,
    nearest: np.ndarray,
    captions_recon: Sequence[str],
    captions_nearest: Sequence[str],
    pairs_per_row: int = 5,
) -> str:
    """Tiles each reconstruction beside its nearest private image, captioned.

    Args:
      path: PNG path.
      recon: float [P, h, w, C] in [0, 1].
      nearest: float [P, h, w, C] in [0, 1], same order.
      captions_recon: P captions for the reconstructions.
      captions_nearest: P captions for the private images.
      pairs_per_row: pairs per grid row.

    Returns:
      The path.
    """
    tiles = np.stack([recon, nearest], axis=1).reshape(-1, *recon.shape[1:])
    captions = [c for pair in zip(captions_recon, captions_nearest, strict=True) for c in pair]
    scale = max(1, math.ceil(64 / recon.shape[1]))
    ncol = 2 * min(pairs_per_row, len(recon))
    return grids.save_grid(path, tiles, ncol=ncol, captions=captions, scale=scale)


def write_report(
    path: str,
    metrics: dict[str, Any],
    *,
    info: dict[str, Any],
    notes: Sequence[str],
    grid: str | None,
) -> str:
    """Writes report.md: provenance, the metrics table, notes and the pairs grid."""
    lines = ['# Model-inversion attack evaluation', '']
    lines += [f'- **{k}**: {v}' for k, v in info.items()]
    lines += ['', format_table(metrics), '']
    lines += [
        'Accuracies are fractions; `±` is the mean over identity batches of the standard',
        'deviation across seeds. Per-identity results: `per_identity.csv`; per (batch, seed)',
        'group: `groups.csv`; all values: `metrics.json`.',
        '',
    ]
    if notes:
        lines += ['## Notes', ''] + [f'- {n}' for n in notes] + ['']
    if grid:
        lines += [
            '## Reconstructions and their nearest private training images',
            '',
            'Left of each pair: a reconstruction, captioned `#identity confidence` (the',
            "evaluation model's softmax probability of the target identity). Right: the",
            'private training image of that identity nearest in evaluation-model features,',
            'captioned with the squared feature distance.',
            '',
            f'![reconstructions beside nearest private images]({os.path.basename(grid)})',
            '',
        ]
    atomic.write_text(path, '\n'.join(lines))
    return path
