r"""Runs the defense x attack matrix and writes results.csv/.md and a utility-privacy plot.

  python launch/sweep.py --config=configs/sweep_celeba.py:runlocal --workdir=/tmp/sweep

Rerunning the same command skips finished cells and resumes the unfinished one.
"""

from absl import flags
from ml_collections import config_flags

from tldmi_jax.reporting import sweep
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    rows = sweep.run(_CONFIG.value, _WORKDIR.value)
    done = sum(r['status'] == 'done' for r in rows)
    print(f'{done}/{len(rows)} cells done; table: {_WORKDIR.value}/results.md')


if __name__ == '__main__':
    cli.run(main)
