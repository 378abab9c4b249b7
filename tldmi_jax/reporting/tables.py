"""Results tables (CSV, Markdown) and the utility-vs-privacy plot of a sweep."""

import csv
import math
import os
from typing import Any

from tldmi_jax.utils import atomic

COLUMNS = (
    'target',
    'defense',
    'trainable_params',
    'target/natural_acc',
    'attack',
    'attack/acc@1',
    'attack/acc@1_std',
    'attack/acc@1_ci95',
    'attack/acc@5',
    'attack/acc@5_std',
    'attack/num_classes',
    'attack/knn_dist',
    'attack/delta_eval',
    'attack/delta_face',
    'attack/fid',
    'protocol_hash',
    'status',
    'error',
)
_METRICS = (
    'attack/acc@1',
    'attack/acc@1_std',
    'attack/acc@1_ci95',
    'attack/acc@5',
    'attack/acc@5_std',
    'attack/num_classes',
    'attack/knn_dist',
    'attack/delta_eval',
    'attack/delta_face',
    'attack/fid',
    'protocol_hash',
)


def row(record: dict[str, Any]) -> dict[str, Any]:
    """The table fields of one cell record (`{'status', 'metrics'|'error'}`)."""
    out = {'status': record.get('status', ''), 'error': record.get('error', '')}
    found = record.get('metrics') or {}
    for key in _METRICS:
        out[key] = found.get(key)
    if found.get('target/natural_acc') is not None:
        out['target/natural_acc'] = found['target/natural_acc']
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    if isinstance(value, float):
        return f'{value:.4f}'
    if isinstance(value, int) and value > 10_000:
        return f'{value / 1e6:.2f} M'
    return str(value)


def _pm(mean: Any, std: Any) -> str:
    if mean is None:
        return '-'
    return f'{_fmt(mean)} ± {_fmt(std)}' if std is not None else _fmt(mean)


def write(workdir: str, rows: list[dict[str, Any]]) -> None:
    """Writes results.csv, results.md and utility_privacy.png for the rows so far."""
    with atomic.open_for_write(os.path.join(workdir, 'results.csv'), newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore')
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in COLUMNS})
    lines = ['# Defense x attack results', '', *markdown_table(rows)]
    lines += ['', '![utility vs privacy](utility_privacy.png)', '']
    atomic.write_text(os.path.join(workdir, 'results.md'), '\n'.join(lines))
    plot(os.path.join(workdir, 'utility_privacy.png'), rows)


HEADER = (
    'target',
    'defense',
    'trainable',
    'natural acc',
    'attack',
    'acc@1',
    'acc@5',
    'KNN dist',
    'FID',
    'protocol',
    'status',
)


def _ppa(rows: list[dict[str, Any]]) -> bool:
    """Whether the rows carry PPA's distances (delta_eval, delta_face) instead of KNN's."""
    return any(r.get('attack/delta_eval') is not None for r in rows)


def _top5(rows: list[dict[str, Any]]) -> bool:
    """Whether top-5 says anything: False when every evaluation model has <= 5 classes."""
    known = [r['attack/num_classes'] for r in rows if r.get('attack/num_classes') is not None]
    return not known or max(known) > 5


def header(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """`HEADER`, with PPA's distances in place of the KNN distance when the rows have them,
    and without acc@5 when it is 1 by construction (evaluation models of <= 5 classes)."""
    names = HEADER
    if _ppa(rows):
        at = names.index('KNN dist')
        names = (*names[:at], 'delta_eval', 'delta_face', *names[at + 1 :])
    if not _top5(rows):
        names = tuple(n for n in names if n != 'acc@5')
    return names


def cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The formatted cells of the results table, one list per row (columns: `header`)."""
    ppa, top5 = _ppa(rows), _top5(rows)
    out = []
    for r in rows:
        status = r.get('status', '')
        if r.get('error'):
            status = f'{status}: {r["error"]}'.replace('|', '/').replace('\n', ' ')
        out.append(
            [
                str(r.get('target', '')),
                str(r.get('defense', '')),
                _fmt(r.get('trainable_params')),
                _fmt(r.get('target/natural_acc')),
                str(r.get('attack', '')),
                _pm(r.get('attack/acc@1'), r.get('attack/acc@1_std')),
                *((_pm(r.get('attack/acc@5'), r.get('attack/acc@5_std')),) if top5 else ()),
                *(
                    (_fmt(r.get('attack/delta_eval')), _fmt(r.get('attack/delta_face')))
                    if ppa
                    else (_fmt(r.get('attack/knn_dist')),)
                ),
                _fmt(r.get('attack/fid')),
                _fmt(r.get('protocol_hash')),
                status,
            ]
        )
    return out


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """The lines of the Markdown results table (one row per cell)."""
    names = header(rows)
    lines = ['| ' + ' | '.join(names) + ' |', '|' + '---|' * len(names)]
    return lines + ['| ' + ' | '.join(row) + ' |' for row in cells(rows)]


def plot(path: str, rows: list[dict[str, Any]]) -> None:
    """Natural accuracy (utility) against attack top-1 (privacy leak), one point per cell.

    Colour: the target; marker: the attack; both named in the legend (no labels on the
    points, which overlap when points are close). Horizontal bars: the 95 % interval of
    top-1 over seeds (`attack/acc@1_ci95`) where the evaluation reported one.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    pts = [
        r
        for r in rows
        if r.get('attack/acc@1') is not None and r.get('target/natural_acc') is not None
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = 'osD^vP*X'
    attacks = sorted({str(r.get('attack', '')) for r in pts})
    targets = list(dict.fromkeys(str(r.get('target', '')) for r in pts))
    colours = plt.get_cmap('tab10' if len(targets) <= 10 else 'tab20')
    for r in pts:
        ci = r.get('attack/acc@1_ci95')
        ci = None if ci is None or (isinstance(ci, float) and math.isnan(ci)) else ci
        ax.errorbar(
            r['attack/acc@1'],
            r['target/natural_acc'],
            xerr=ci,
            fmt=markers[attacks.index(str(r.get('attack', ''))) % len(markers)],
            color=colours(targets.index(str(r.get('target', ''))) % colours.N),
            capsize=3,
            markersize=7,
        )
    handles = [
        plt.Line2D([], [], color=colours(i % colours.N), marker='o', ls='', label=t)
        for i, t in enumerate(targets)
    ]
    if len(attacks) > 1:
        handles += [
            plt.Line2D([], [], color='k', marker=markers[i % len(markers)], ls='', label=a)
            for i, a in enumerate(attacks)
        ]
    ax.set_xlabel('attack accuracy top-1 (lower = more private)')
    ax.set_ylabel('natural accuracy (higher = more useful)')
    title = 'Utility vs privacy'
    if len(attacks) == 1:
        title += f' ({attacks[0]})'
    if any(r.get('attack/acc@1_ci95') is not None for r in pts):
        title += '; bars: 95 % interval over seeds'
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, fontsize=8, loc='center left', bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    atomic.savefig(fig, path, dpi=120)
    plt.close(fig)
