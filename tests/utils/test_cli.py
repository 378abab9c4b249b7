"""cli: one `error:` line per failure, hints for known failures, --verbose tracebacks."""

import errno

import jax
import ml_collections
import pytest
from absl import app, flags

from tldmi_jax.utils import cli


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith('error:')]


def _call(main, *args: str) -> int:
    was_parsed = flags.FLAGS.is_parsed()
    try:
        return cli.call(main, ['prog', *args])
    finally:
        flags.FLAGS.unparse_flags()
        if was_parsed:
            flags.FLAGS.mark_as_parsed()


def test_a_failing_main_prints_one_line_and_returns_1(capsys):
    def main(argv):
        raise ValueError('the input is bad\nsecond line of detail')

    assert _call(main) == 1
    err = capsys.readouterr().err
    assert _error_lines(err) == ['error: the input is bad second line of detail']
    assert 'Traceback' not in err


def test_verbose_adds_the_traceback_above_the_line(capsys):
    def main(argv):
        raise KeyError('missing')

    assert _call(main, '--verbose') == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert 'Traceback' in err and lines[-1] == 'error: KeyError: missing'


def test_success_and_usage_errors(capsys):
    assert _call(lambda argv: None) == 0

    def usage(argv):
        raise app.UsageError('--src_d is for GAN priors only.')

    assert _call(usage) == 2
    assert _call(lambda argv: None, '--no_such_flag') == 2
    errors = _error_lines(capsys.readouterr().err)
    assert errors[0] == 'error: --src_d is for GAN priors only.'
    assert errors[1].startswith("error: Unknown command line flag 'no_such_flag'")


def test_out_of_memory_suggests_half_the_batch():
    oom = jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 8.00GiB')
    train = ml_collections.ConfigDict({'batch_size': 64})
    attack = ml_collections.ConfigDict({'identities': {'batch_size': 60}})
    assert cli.describe(oom, config=train).endswith('e.g. --config.batch_size=32')
    assert cli.describe(oom, config=attack).endswith('--config.identities.batch_size=30')
    wrapped = ValueError('step failed')
    wrapped.__cause__ = MemoryError()
    assert cli.describe(wrapped).startswith('out of host memory')


def test_disk_full_and_permissions():
    full = OSError(errno.ENOSPC, 'No space left on device', '/w/checkpoints/10')
    outer = RuntimeError('orbax save failed')
    outer.__context__ = full
    assert cli.describe(outer).startswith('disk full while writing /w/checkpoints/10;')
    denied = PermissionError(errno.EACCES, 'Permission denied', '/w/run/metrics.jsonl')
    assert cli.describe(denied, workdir='/w/run').startswith('workdir not writable: /w/run')
    assert cli.describe(denied, workdir='/other') == (
        'permission denied: /w/run/metrics.jsonl (Permission denied)'
    )


@pytest.mark.parametrize(
    'exc, line',
    [
        (
            FileNotFoundError(errno.ENOENT, 'No such file', '/x/y'),
            'no such file or directory: /x/y',
        ),
        (TypeError('bad type'), 'TypeError: bad type'),
        (
            ValueError('x' * 3000),
            'x' * cli._MAX_CHARS + ' ... (--verbose prints the whole message)',
        ),
    ],
)
def test_plain_messages(exc, line):
    assert cli.describe(exc) == line
