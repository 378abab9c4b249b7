"""The sweep as independent pieces, for a cluster: the plan, one piece, the Slurm script.

`plan` lists every piece of the matrix (a target, a prior, LOMMA's students, the evaluation
model, a cell, the results table) with its dependencies; `run_piece`
(`launch/sweep.py --config.only=<piece>`) runs one piece once its upstream pieces have
finished and fails with `UpstreamMissing` naming them otherwise; `write_plan`
(`--config.cells=plan`) writes `plan.json` and `plan_slurm.sh`, one Slurm job array per
dependency level. With a workdir on a shared filesystem the pieces run as independent jobs:
they do not lock the sweep's root (each stage they run locks its own workdir), and after
every cell `results.csv`/`results.md` are rewritten from whatever cells have finished.
"""

import os
import shlex
from typing import Any

import ml_collections

from tldmi_jax.pipelines.sweep import (
    SHARED_PRIORS,
    CellsFailed,
    Sweep,
    check_config,
    check_done,
    configs_dir,
    finished,
    read_record,
    run_cell,
    target_info,
)
from tldmi_jax.reporting import tables
from tldmi_jax.utils import atomic, distributed, metrics
from tldmi_jax.utils import workdir as workdir_lib

__all__ = [
    'CellsFailed',
    'UpstreamMissing',
    'assemble',
    'levels',
    'plan',
    'run_piece',
    'write_plan',
]


class UpstreamMissing(ValueError):
    """`--config.only` names a piece whose upstream pieces have not finished (named)."""


def _sweep(config: ml_collections.ConfigDict, workdir: str, config_file_dir: str) -> Sweep:
    return Sweep(config, os.path.abspath(workdir), configs_dir(config, config_file_dir))


def plan(
    config: ml_collections.ConfigDict, workdir: str, config_file_dir: str = ''
) -> list[dict[str, Any]]:
    """Every piece of the sweep with its dependencies, upstream pieces first.

    Pieces: `target:<name>` (unless the target's checkpoint is given), `prior:gmi` (public
    data, one for all targets), `prior:<kind>:<target>` (KEDMI/PLG-MI GANs, per target),
    `prior:stylegan2` (runlocal's tiny stand-in; none when `config.priors.<kind>` is set),
    `students:<target>` (LOMMA), `eval_model` (runlocal without an evaluation model),
    `cell:<target>__<attack>` (attack + evaluation) and `results` (the table of whatever
    cells finished; it depends on every cell but runs with missing ones too).

    Returns:
      `[{'id', 'deps': [ids], 'workdir'}]`.
    """
    check_config(config)
    sweep = _sweep(config, workdir, config_file_dir)
    pieces: dict[str, dict[str, Any]] = {}

    def add(piece: str, path: str, deps: list[str]) -> str:
        pieces.setdefault(piece, {'id': piece, 'deps': deps, 'workdir': path})
        return piece

    needs = {a: sweep.needs(a) for a in config.attacks}
    runs_eval_model = config.get('runlocal', False) and not config.eval_model.get('checkpoint')
    for t in config.targets:
        if not config.targets[t].get('checkpoint'):
            add(f'target:{t}', sweep.target_dir(t), [])
    if runs_eval_model:
        add('eval_model', os.path.join(sweep.workdir, 'eval_model'), [])
    cells = []
    for t in config.targets:
        target = [f'target:{t}'] if f'target:{t}' in pieces else []
        for a in config.attacks:
            kind = needs[a][0]
            shared = kind in SHARED_PRIORS
            deps = list(target)
            if not sweep.given_prior(kind):  # A prior the config names is no piece.
                prior_id = f'prior:{kind}' if shared else f'prior:{kind}:{t}'
                deps.append(add(prior_id, sweep.prior_dir(kind, t), [] if shared else target))
            if 'students' in needs[a]:
                deps.append(add(f'students:{t}', sweep.students_dir(t), target))
            if runs_eval_model:
                deps.append('eval_model')
            cells.append(add(f'cell:{t}__{a}', sweep.cell_dir(t, a), deps))
    add('results', sweep.workdir, cells)
    order = {'target': 0, 'eval_model': 0, 'prior': 1, 'students': 1, 'cell': 2, 'results': 3}
    ranked = sorted(pieces.values(), key=lambda p: order[p['id'].split(':')[0]])
    return [dict(p, deps=list(p['deps'])) for p in ranked]


def piece_finished(sweep: Sweep, piece: str) -> bool:
    """Whether `piece` has finished in the sweep's workdir."""
    kind, _, rest = piece.partition(':')
    if kind == 'students':
        return os.path.exists(os.path.join(sweep.students_dir(rest), 'distill.json'))
    if kind == 'cell':
        record = read_record(sweep, *rest.split('__', 1))
        return record is not None and record.get('status') == 'done'
    if kind == 'results':
        return os.path.exists(os.path.join(sweep.workdir, 'results.csv'))
    if kind == 'prior':
        prior_kind, _, target_name = rest.partition(':')
        return sweep.prior_finished(prior_kind, target_name)
    if kind == 'eval_model':
        return finished(os.path.join(sweep.workdir, 'eval_model'))
    return finished(sweep.target_dir(rest))


def assemble(sweep: Sweep) -> list[dict[str, Any]]:
    """Writes the results table from every cell that has run (`missing` for the others)."""
    rows = []
    for t in sweep.config.targets:
        for a in sweep.config.attacks:
            record = read_record(sweep, t, a) or {'status': 'missing', 'error': 'not run yet'}
            rows.append({**target_info(sweep, t), 'attack': a, **tables.row(record)})
    if distributed.is_main():
        tables.write(sweep.workdir, rows)
    return rows


def run_piece(
    config: ml_collections.ConfigDict, workdir: str, piece: str, config_file_dir: str = ''
) -> list[dict[str, Any]]:
    """Runs one piece of `plan` (`--config.only=<piece>`); returns the results rows (after a
    cell or `results`; [] after the other pieces).

    The sweep's root is not locked (pieces run side by side); its config must equal the one
    `config.json` holds (written by the first piece or the plan). A finished piece is not
    run again. After a cell, and for `results`, the table is rewritten from every finished
    cell.

    Raises:
      ValueError: an unknown piece (the valid ones are listed).
      UpstreamMissing: an upstream piece has not finished (named, with its command flag).
      CellsFailed: the cell ran and failed (recorded in its cell.json).
    """
    pieces = {p['id']: p for p in plan(config, workdir, config_file_dir)}
    if piece not in pieces:
        raise ValueError(
            f'config.only={piece!r} is no piece of this sweep; use one of {", ".join(pieces)}'
        )
    sweep = _sweep(config, workdir, config_file_dir)
    metrics.quiet_libraries()
    workdir_lib.check_shared(config, sweep.workdir, record=False)  # Nothing written yet.
    if piece != 'results':
        missing = [d for d in pieces[piece]['deps'] if not piece_finished(sweep, d)]
        if missing:
            flags = ', '.join(f'--config.only={d}' for d in missing)
            raise UpstreamMissing(
                f'{piece} needs {", ".join(missing)}, which did not finish in {sweep.workdir}; '
                f'run {flags} first (--config.cells=plan lists the order)'
            )
    workdir_lib.check_shared(config, sweep.workdir)
    kind, _, rest = piece.partition(':')
    if kind == 'cell':
        t, a = rest.split('__', 1)
        record = read_record(sweep, t, a)
        if record is None or record.get('status') != 'done':
            record = run_cell(sweep, t, a)
        rows = assemble(sweep)
        if record['status'] != 'done':
            check_done([r for r in rows if (r['target'], r['attack']) == (t, a)], sweep.workdir)
        return rows
    if kind == 'results':
        return assemble(sweep)
    if kind == 'target':
        sweep.target(rest)
    elif kind == 'eval_model':
        sweep.eval_model()
    elif kind == 'students':
        sweep.students(rest, sweep.target(rest))
    else:
        prior_kind, _, t = rest.partition(':')
        sweep.prior(prior_kind, t, sweep.target(t) if t else '')
    return []


def levels(pieces: list[dict[str, Any]]) -> list[list[str]]:
    """The pieces grouped so that each group depends only on earlier groups."""
    level: dict[str, int] = {}
    for p in pieces:  # `plan` lists upstream pieces first.
        level[p['id']] = 1 + max((level[d] for d in p['deps']), default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values()) + 1)]
    for p in pieces:
        out[level[p['id']]].append(p['id'])
    return out


_SLURM = """#!/bin/bash
# The sweep as Slurm job arrays, one per dependency level, each starting when the previous
# one finished (written by launch/sweep.py --config.cells=plan; see docs/scaling.md).
#   bash {script}     submits every level (extra sbatch options: SBATCH_ARGS='--gres=gpu:1')
# Inside an array task it runs the piece of its level and index. The results level runs
# after the cells whatever their outcome (afterany), so failed cells show in the table.
# TLDMI_MULTIHOST=1 runs each piece on every task of its job (srun, --config.distributed=True):
#   SBATCH_ARGS='--nodes=2 --ntasks-per-node=1 --gpus-per-node=8' TLDMI_MULTIHOST=1 bash {script}
set -euo pipefail
LEVELS=(
{levels}
)
run_piece() {{
  cd {cwd}
  if [ -n "${{TLDMI_MULTIHOST:-}}" ]; then
    exec srun {command} --config.only="$1" --config.distributed=True
  fi
  exec {command} --config.only="$1"
}}
if [ -n "${{SLURM_ARRAY_TASK_ID:-}}" ]; then
  read -r -a pieces <<< "${{LEVELS[$TLDMI_SWEEP_LEVEL]}}"
  run_piece "${{pieces[$SLURM_ARRAY_TASK_ID]}}"
fi
mkdir -p {logs}
previous=''
for level in "${{!LEVELS[@]}}"; do
  read -r -a pieces <<< "${{LEVELS[$level]}}"
  after=afterok
  [ "$level" = "$(( ${{#LEVELS[@]}} - 1 ))" ] && after=afterany
  job=$(sbatch --parsable ${{SBATCH_ARGS:-}} ${{previous:+--dependency=$after:$previous}} \\
    --array=0-$(( ${{#pieces[@]}} - 1 )) --job-name=tldmi_sweep_$level \\
    --output={logs}/level${{level}}_%a.out --export=ALL,TLDMI_SWEEP_LEVEL=$level "$0")
  echo "level $level: ${{#pieces[@]}} piece(s) as job array $job"
  previous=$job
done
"""


def write_plan(
    config: ml_collections.ConfigDict,
    workdir: str,
    command: list[str],
    config_file_dir: str = '',
    cwd: str = '',
) -> list[dict[str, Any]]:
    """Writes `plan.json` (each piece with its command and dependencies) and `plan_slurm.sh`.

    Args:
      config: the sweep config.
      workdir: the sweep's (shared) workdir.
      command: the launcher command line without `--config.only` (the same config file,
        workdir and overrides for every piece).
      config_file_dir: see `run`.
      cwd: the directory the commands run in (default: the current one).

    Returns:
      The plan, each piece with its `command` (one shell line).
    """
    pieces = plan(config, workdir, config_file_dir)
    workdir = os.path.abspath(workdir)
    workdir_lib.check_shared(config, workdir)
    base = shlex.join(command)
    for p in pieces:
        p['command'] = f'{base} --config.only={shlex.quote(p["id"])}'
    atomic.write_json(os.path.join(workdir, 'plan.json'), {'pieces': pieces}, indent=1)
    script = _SLURM.format(
        script=os.path.join(workdir, 'plan_slurm.sh'),
        levels='\n'.join(f'  {shlex.quote(" ".join(group))}' for group in levels(pieces)),
        cwd=shlex.quote(os.path.abspath(cwd or os.getcwd())),
        command=base,
        logs=shlex.quote(os.path.join(workdir, 'slurm')),
    )
    path = os.path.join(workdir, 'plan_slurm.sh')
    atomic.write_text(path, script)
    os.chmod(path, 0o755)
    return pieces
