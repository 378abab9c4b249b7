"""The entry point of every launcher: `cli.run(main)` in place of `absl.app.run(main)`.

A run that fails prints exactly one line that starts with `error:`, the last line on stderr,
and exits with status 1; a bad command line (an unknown flag, a misspelt config field, a
value that does not parse, a missing required flag) exits with status 2. The line says what
went wrong and what to do; there is no traceback unless `--verbose` is given, which prints it
above the error line. Known failures get a hint:

* out of device or host memory: retry with a smaller batch (the config's field is named);
* disk full (`ENOSPC`): the file that was being written;
* permission denied under `--workdir`: the workdir is not writable.

    if __name__ == '__main__':
        cli.run(main)

`call(main, argv)` does the same in-process and returns the exit status instead of exiting
(tests use it to run a launcher's `main` on a command line).
"""

import errno
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags

from tldmi_jax.utils import distributed

FAILURE, USAGE = 1, 2
_MAX_CHARS = 2000

_VERBOSE = flags.DEFINE_bool('verbose', False, 'On an error, also print the traceback.')

Main = Callable[[list[str]], Any]


def run(main: Main) -> NoReturn:
    """Parses the flags and runs `main(argv)` like `app.run`, with one-line errors."""

    def parse(argv: list[str]) -> list[str]:
        try:
            return _parse(argv)
        except Exception as e:  # flags.Error, or a config override naming no field
            _exit_quietly(_fail(e, argv, usage=True))

    def guarded(args: list[str]) -> None:
        status = _run_main(main, args, sys.argv)
        if status:
            _exit_quietly(status)

    app.run(guarded, flags_parser=parse)


def call(main: Main, argv: Sequence[str]) -> int:
    """Runs `main` on the command line `argv` in-process; returns the exit status.

    Flags are parsed into the global `absl.flags.FLAGS` (config overrides are read from
    `sys.argv`, which is set to `argv` meanwhile); errors are reported as by `run`.

    Args:
      main: a launcher's `main(argv)`.
      argv: the full command line, program name first.

    Returns:
      0 on success, 1 on a failure, 2 on a bad command line, 130 when interrupted.
    """
    argv = list(argv)
    saved = sys.argv
    sys.argv = argv
    try:
        try:
            args = _parse(argv)
        except Exception as e:  # flags.Error, or a config override naming no field
            return _fail(e, argv, usage=True)
        return _run_main(main, args, argv)
    finally:
        sys.argv = saved


def describe(
    exc: BaseException, *, workdir: str | None = None, config: Any = None, usage: bool = False
) -> str:
    """The one-line message for `exc` (without the `error: ` prefix).

    Args:
      exc: the exception that stopped the run.
      workdir: the run's `--workdir` (a permission error under it names it).
      config: the run's config (an out-of-memory hint names its batch-size field).
      usage: `exc` came from parsing the command line.

    Returns:
      A single line.
    """
    if usage:
        return _one_line(_usage_message(exc, sys.argv))
    chain = _chain(exc)
    for e in chain:
        if _is_oom(e):
            return _one_line(_oom_message(e, config))
    for e in chain:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            where = e.filename or 'an output file'
            return (
                f'disk full while writing {where}; free some space (or choose another '
                '--workdir) and rerun the same command to resume'
            )
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return _one_line(_permission_message(e, workdir))
    return _one_line(_plain(exc))


def _parse(argv: list[str]) -> list[str]:
    """Parses the flags and loads every config file now (config_flags defers its errors)."""
    from ml_collections.config_flags import config_flags

    args = flags.FLAGS(argv)
    if 'workdir' in flags.FLAGS and flags.FLAGS['workdir'].present:
        if not str(flags.FLAGS['workdir'].value or '').strip():
            raise app.UsageError('--workdir is empty; give the directory the run writes to')
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        if config_flags.is_config_flag(flag) and flag.present:
            try:
                _ = flag.value.keys()
            except OSError as e:  # A file that is missing or does not load.
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                raise app.UsageError(f'--{name}: cannot load {lines[-1]}') from e
    return args


def _run_main(main: Main, args: list[str], argv: Sequence[str]) -> int:
    try:
        config = _flag_value('config')
        if config is not None and config.get('distributed', False):
            distributed.initialize()  # Before the launcher's first JAX call.
        result = main(args)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        return _fail(ValueError(str(e.code).removeprefix('error: ')), argv)
    except app.UsageError as e:
        return _fail(e, argv, usage=True)
    except (Exception, KeyboardInterrupt) as e:
        return _fail(e, argv)
    finally:
        _release_workdirs()
    return int(result or 0)


def _release_workdirs() -> None:
    """Releases the workdir locks the run took (a new workdir it left empty is removed)."""
    workdir = sys.modules.get('tldmi_jax.utils.workdir')
    if workdir is not None:  # Not imported: no stage ran, no lock was taken.
        workdir.release_all()


def _fail(exc: BaseException, argv: Sequence[str], usage: bool = False) -> int:
    """Prints the traceback (with --verbose) and the error line; returns the exit status."""
    _close_progress_bars()
    if _verbose(argv):
        traceback.print_exception(exc, file=sys.stderr)
    if usage:
        line = _one_line(_usage_message(exc, argv))
    else:
        line = describe(exc, workdir=_flag_value('workdir'), config=_flag_value('config'))
    sys.stdout.flush()
    print(f'error: {line}', file=sys.stderr, flush=True)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return USAGE if usage else FAILURE


def _exit_quietly(status: int) -> NoReturn:
    """Exits without letting later log records (from exit handlers) follow the error line."""
    import logging as logging_std

    logging_std.disable(logging_std.CRITICAL)
    sys.exit(status)


def _verbose(argv: Sequence[str]) -> bool:
    """True if `--verbose` is on (read from argv too: parsing may have failed before it)."""
    for arg in argv[1:]:
        if arg == '--':
            break
        if arg in ('--verbose', '-verbose', '--verbose=true', '--verbose=1', '--verbose=True'):
            return True
    return False


def _flag_value(name: str) -> Any:
    """The parsed value of a flag the launcher defines, or None."""
    try:
        if name in flags.FLAGS and flags.FLAGS.is_parsed():
            return flags.FLAGS[name].value
    except Exception:  # An unparsable config file leaves no value to read.
        return None
    return None


def _close_progress_bars() -> None:
    """Closes open tqdm bars now, so they do not redraw after the error line at exit."""
    tqdm = sys.modules.get('tqdm')
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, '_instances', ())):
        try:
            bar.close()
        except Exception:  # A half-built bar; exiting matters more than drawing it.
            pass


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling (cause first)."""
    seen: list[BaseException] = []
    while exc is not None and all(exc is not e for e in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _one_line(text: str) -> str:
    text = ' '.join(part.strip() for part in str(text).splitlines() if part.strip())
    if len(text) > _MAX_CHARS:
        text = text[:_MAX_CHARS] + ' ... (--verbose prints the whole message)'
    return text


def _plain(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return 'interrupted; rerun the same command to resume'
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc).startswith('[Errno'):
        return f'no such file or directory: {exc.filename}'
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    else:
        text = str(exc)
    own = type(exc).__module__.startswith('tldmi_jax')  # Messages written to be read alone.
    if (own or isinstance(exc, ValueError | OSError)) and text:
        return text
    name = type(exc).__name__
    return f'{name}: {text}' if text else name


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    is_runtime = isinstance(exc, RuntimeError) or 'RuntimeError' in type(exc).__name__
    return is_runtime and ('RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower())


def _oom_message(exc: BaseException, config: Any) -> str:
    where = 'host' if isinstance(exc, MemoryError) else 'device'
    detail = (str(exc).strip().splitlines() or [''])[0][:200]
    field, size = 'batch_size', None
    try:
        if config is not None and 'identities' in config:
            field, size = 'identities.batch_size', int(config.identities.batch_size)
        elif config is not None and 'batch_size' in config:
            size = int(config.batch_size)
    except (TypeError, ValueError, AttributeError):
        size = None
    suggestion = f'--config.{field}={max(1, size // 2)}' if size else f'a smaller --config.{field}'
    detail = f' ({detail})' if detail else ''
    return f'out of {where} memory{detail}; retry with a smaller batch, e.g. {suggestion}'


def _permission_message(exc: OSError, workdir: str | None) -> str:
    path = exc.filename or workdir or '?'
    reason = exc.strerror or 'permission denied'
    if workdir:
        top = os.path.abspath(workdir)
        here = os.path.abspath(str(path))
        if here == top or here.startswith(top + os.sep) or top.startswith(here + os.sep):
            return (
                f'workdir not writable: {workdir} ({reason}: {path}); choose another '
                '--workdir or fix its permissions'
            )
    return f'permission denied: {path} ({reason})'


def _usage_message(exc: BaseException, argv: Sequence[str]) -> str:
    """A bad command line: names the flag or config field and, if known, the fix."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, AttributeError | KeyError):
        # ml_collections: "'lrr'\nDid you mean "lr" instead of "lrr"?"
        match = re.match(r"""\W*'?([\w-]+)'?""", text)
        key = match.group(1) if match else ''
        flag = next(
            (
                a.split('=', 1)[0]
                for a in argv[1:]
                if a.startswith('--') and '.' in a.split('=', 1)[0] and key in re.split(r'[.=]', a)
            ),
            f'--config.{key}',
        )
        hint = re.search(r'Did you mean "([^"]+)"', text)
        suggestion = f'; did you mean "{hint.group(1)}"?' if hint else ''
        return f'{flag}: no such config field {key!r}{suggestion}'
    required = re.search(r'Flag --(\w+) must have a value other than None', text)
    if required:
        return f'--{required.group(1)} is required'
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith('Traceback') for line in lines):
        # A config file that raised: keep the flag and the exception, not the frames.
        text = f'{lines[0]} {lines[-1]}'
    if isinstance(exc, flags.UnrecognizedFlagError):
        text += ' (--helpfull lists the flags)'
    return text
