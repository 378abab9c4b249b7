r"""The demo: the whole TL-DMI story on Fashion-MNIST in one command (`make demo`).

  python launch/demo.py --config=configs/demo.py --workdir=workdirs/demo
  python launch/demo.py --config=configs/demo.py:runlocal --workdir=/tmp/demo  # ~1 minute

Writes report.md and report.html in --workdir. Rerunning the same command resumes: finished
stages are skipped and the unfinished one continues from its last checkpoint.
"""

from absl import flags
from ml_collections import config_flags

from tldmi_jax.pipelines import demo
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    demo.run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
    cli.run(main)
