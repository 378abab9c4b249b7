r"""Runs the defense x attack matrix and writes results.csv/.md and a utility-privacy plot.

  python launch/sweep.py --config=configs/sweep_celeba.py:runlocal --workdir=/tmp/sweep

Rerunning the same command skips finished cells and resumes the unfinished one. A sweep
whose cells failed finishes the others, then exits with status 1 and one line naming them.

On a cluster: `--config.cells=plan` prints every piece (target, prior, students, evaluation
model, cell, results) as its own command with its dependencies, and writes them to
WORKDIR/plan.json and WORKDIR/plan_slurm.sh; `--config.only=PIECE` runs one of them.
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from tldmi_jax.pipelines import sweep, sweep_pieces
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
flags.mark_flags_as_required(['config', 'workdir'])


def _piece_command(workdir: str) -> list[str]:
    """This command line, with absolute paths, without --config.cells/--config.only."""
    command = [sys.executable, os.path.abspath(__file__)]
    args = iter(sys.argv[1:])
    for arg in args:
        name, eq, value = arg.partition('=')
        if name in ('--workdir', '--config.cells', '--config.only'):
            if not eq:
                next(args, None)  # `--flag VALUE`
            continue
        if name == '--config' and eq:
            path, colon, variant = value.partition(':')
            arg = f'--config={os.path.abspath(path)}{colon}{variant}'
        command.append(arg)
    return [*command, f'--workdir={os.path.abspath(workdir)}']


def main(argv):
    del argv
    config_file = config_flags.get_config_filename(flags.FLAGS['config'])
    config_dir = os.path.dirname(os.path.abspath(config_file))  # Stage configs live beside it.
    config, workdir = _CONFIG.value, _WORKDIR.value
    if config.get('cells') not in ('', None, 'plan'):
        raise ValueError(f"config.cells={config.cells!r}: use 'plan' (or leave it empty)")
    if config.get('cells') == 'plan':
        pieces = sweep_pieces.write_plan(config, workdir, _piece_command(workdir), config_dir)
        print(json.dumps(pieces, indent=1))
        print(f'{len(pieces)} pieces: {workdir}/plan.json and {workdir}/plan_slurm.sh')
        return
    if config.get('only'):
        rows = sweep_pieces.run_piece(config, workdir, config.only, config_dir)
        print(f'{config.only} done' + (f'; table: {workdir}/results.md' if rows else ''))
        return
    rows = sweep.run(config, workdir, config_dir)
    done = sum(r['status'] == 'done' for r in rows)
    print(f'{done}/{len(rows)} cells done; table: {workdir}/results.md')
    sweep.check_done(rows, workdir)  # Failed cells: one error line, exit status 1.


if __name__ == '__main__':
    cli.run(main)
