r"""The human evaluation as a local web app: raters pick the reconstruction more like the person.

  python launch/userstudy.py --config=configs/userstudy.py --workdir=workdirs/study \
    --config.arms.none=workdirs/attack_none --config.arms.tldmi=workdirs/attack_tldmi \
    --config.data.root=/path/to/celeba_manual_dir

`--config.mode=prepare|serve|export|summary` (default serve: prepares first when needed and
serves on http://127.0.0.1:8765/ until Ctrl-C). More arms: `configs/userstudy.py:arms=a+b+c`
and `--config.arms.c=DIR`. See docs/userstudy.md.
"""

from absl import flags
from ml_collections import config_flags

from tldmi_jax.pipelines import runlocal
from tldmi_jax.userstudy import study
from tldmi_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The study directory (resumed when rerun).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    config = _CONFIG.value
    if config.mode in ('prepare', 'serve'):  # export/summary only read a prepared study.
        config = runlocal.fill_in('userstudy', config, _WORKDIR.value)  # Only under :runlocal.
    study.run(config, _WORKDIR.value)


if __name__ == '__main__':
    cli.run(main)
