r"""Runs the defense x attack matrix and writes results.csv/.md and a utility-privacy plot.

  python launch/sweep.py --config=configs/sweep_celeba.py:runlocal --workdir=/tmp/sweep

Rerunning the same command skips finished cells and resumes the unfinished one. A sweep
whose cells failed finishes the others, then exits with status 1 and one line naming them.
"""

import os

from absl import flags
from ml_collections import config_flags

from tldmi_jax.pipelines import sweep
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    config_file = config_flags.get_config_filename(flags.FLAGS['config'])
    config_dir = os.path.dirname(os.path.abspath(config_file))  # Stage configs live beside it.
    rows = sweep.run(_CONFIG.value, _WORKDIR.value, config_dir)
    done = sum(r['status'] == 'done' for r in rows)
    print(f'{done}/{len(rows)} cells done; table: {_WORKDIR.value}/results.md')
    sweep.check_done(rows, _WORKDIR.value)  # Failed cells: one error line, exit status 1.


if __name__ == '__main__':
    cli.run(main)
