"""Runs a launcher's `main` in the test process, as its command line would run it."""

import os
import runpy
from collections.abc import Sequence

from absl import flags

from tldmi_jax.utils import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def call_launcher(name: str, argv: Sequence[str]) -> int:
    """`python launch/<name>.py ARGV` through `cli.call`, in this process; returns the exit
    status. The flags the launcher defines are removed afterwards, so the next call (of the
    same or another launcher) defines them again. Callers capture stdout/stderr themselves.
    """
    launcher = os.path.join(ROOT, 'launch', f'{name}.py')
    before, was_parsed = set(flags.FLAGS), flags.FLAGS.is_parsed()
    try:
        main = runpy.run_path(launcher, run_name=f'_launch_{name}')['main']
        return cli.call(main, [launcher, *argv])
    finally:
        flags.FLAGS.unparse_flags()
        for flag in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, flag)
        if was_parsed:
            flags.FLAGS.mark_as_parsed()
