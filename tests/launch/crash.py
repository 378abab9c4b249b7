"""Crash-safety harness: SIGKILL a launcher at a seeded random moment, rerun, compare.

Every long stage has one test that

1. runs its launcher uninterrupted (the reference, shared within a test module),
2. starts the same command in a fresh workdir, waits until `progress(workdir)` (a count of
   finished steps, checkpoints or files that only grows) reaches a number drawn from a
   seeded RNG, waits a further seeded random fraction of a second (so the kill falls inside
   a step or a write, not only just after a checkpoint), and sends SIGKILL,
3. reruns the same command to completion, and
4. compares the final outputs with the reference: bit-identical where the computation is
   deterministic, which on one CPU is everywhere here.

The draws come from `numpy.random.default_rng([TLDMI_CRASH_SEED, test])`; set the
`TLDMI_CRASH_SEED` environment variable to explore other kill points.
"""

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable

import numpy as np
from absl import logging as absl_logging
from flax import traverse_util

from tests.launch import in_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Timing fields of metrics.jsonl (throughput, wall time) differ between any two runs.
TIMING_KEYS = ('train/images_per_sec', 'attack/final_seconds', 'seconds', 'wall_seconds_this_run')


def command(launcher: str, config: str, workdir: str, *overrides: str) -> list[str]:
    """`python launch/<launcher>.py --config=configs/<config> --workdir=... <overrides>`."""
    return [
        sys.executable,
        os.path.join(ROOT, 'launch', f'{launcher}.py'),
        f'--config={os.path.join(ROOT, "configs", config)}',
        f'--workdir={workdir}',
        *overrides,
    ]


def _env() -> dict[str, str]:
    # Compile settings come from tests/conftest.py; PYTHONPATH lets configs import configs.
    return dict(os.environ, PYTHONPATH=ROOT)


def cpu_devices_env(devices: int, **extra: str) -> dict[str, str]:
    """This environment plus `extra`, for a process that sees `devices` CPU devices: the flag
    is appended to `XLA_FLAGS`, so conftest's fast-compile flag stays."""
    flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'
    return dict(os.environ, **extra, XLA_FLAGS=flags.strip())


def run(
    cmd: list[str], timeout: float = 600, status: int = 0, cwd: str = ROOT
) -> subprocess.CompletedProcess:
    """Runs `cmd` to completion (from the repository root); asserts its exit status."""
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == status, proc.stderr[-3000:]
    return proc


def run_here(cmd: list[str], status: int = 0, cwd: str = ROOT) -> subprocess.CompletedProcess:
    """`run(cmd)` in this process (no interpreter start-up or imports: about 2 s of CPU less
    per run), from `cwd` (the repository root); asserts its exit status and returns its
    stdout and stderr (absl's log lines included) as `run` does. The kill tests run their
    uninterrupted reference and their rerun this way: only the killed run needs a process
    of its own."""
    launcher = os.path.splitext(os.path.basename(cmd[1]))[0]
    out, err = io.StringIO(), io.StringIO()
    # absl's log lines: its handler on the root logger, as `app.run` puts it in a process,
    # writing to `err` (the handler keeps the stream it was made with).
    handler, root = absl_logging.get_absl_handler(), logging.getLogger()
    old_stream, old_level = handler.python_handler.setStream(err), root.level
    old_verbosity = absl_logging.get_verbosity()
    installed = handler not in root.handlers
    if installed:
        absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO)  # A launcher process logs from INFO on.
    try:
        with (
            contextlib.chdir(cwd),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = in_process.call_launcher(launcher, cmd[2:])
    finally:
        if installed:
            root.removeHandler(handler)
        handler.python_handler.setStream(old_stream)
        absl_logging.set_verbosity(old_verbosity)
        root.setLevel(old_level)
    assert code == status, f'{launcher} exited {code}: {err.getvalue()[-3000:]}'
    return subprocess.CompletedProcess(cmd, code, out.getvalue(), err.getvalue())


def rng(test: str) -> np.random.Generator:
    """The seeded generator of one test's kill points."""
    seed = int(os.environ.get('TLDMI_CRASH_SEED', '0'))
    return np.random.default_rng([seed, zlib.crc32(test.encode())])


def kill_at_random_point(
    cmd: list[str],
    workdir: str,
    progress: Callable[[str], int],
    *,
    test: str,
    low: int,
    high: int,
    max_delay: float = 0.3,
    timeout: float = 600,
    finished: Callable[[str], bool] | None = None,
) -> int:
    """Starts `cmd`, SIGKILLs it once `progress(workdir)` >= n (n seeded in [low, high]).

    A fast machine may finish the run between reaching n and the kill (the seeded delay
    is up to `max_delay` s): the process ends by itself, or `finished(workdir)` says its
    last output is already written. Then `workdir` is cleared and the run is started once
    more and killed at `low`, without delay.

    Returns:
      The progress at which it was killed, for messages. Fails if the retry also ended
      before the kill.
    """
    gen = rng(test)
    n = int(gen.integers(low, high + 1))
    delay = float(gen.uniform(0.0, max_delay))
    for at, wait in ((n, delay), (low, 0.0)):
        if _kill_once(cmd, workdir, progress, at, wait, timeout) and not (
            finished is not None and finished(workdir)
        ):
            return at
        shutil.rmtree(workdir, ignore_errors=True)
    raise AssertionError(
        f'{test}: the run ended before the kill at progress {n} (delay {delay:.2f} s) and '
        f'again at progress {low} without delay'
    )


def _kill_once(cmd, workdir, progress, n: int, delay: float, timeout: float) -> bool:
    """One run killed once `progress(workdir)` >= n plus `delay` s; False if it ended first."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if progress(workdir) >= n:
                time.sleep(delay)
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    return proc.returncode == -signal.SIGKILL


# --- progress measures -------------------------------------------------------------------


def checkpoint_steps(directory: str) -> list[int]:
    """Committed orbax steps in a CheckpointManager directory (temporary dirs excluded)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def latest_step(directory: str) -> int:
    """The latest committed step under `directory` (0 if none)."""
    return max(checkpoint_steps(directory), default=0)


def count_files(workdir: str, names: Iterable[str]) -> int:
    """How many of the relative paths `names` exist under `workdir`."""
    return sum(os.path.exists(os.path.join(workdir, n)) for n in names)


# --- comparisons ---------------------------------------------------------------------------


def assert_trees_equal(a, b, what: str = '') -> None:
    """Bit-identical nested dicts of arrays (same keys, same values)."""
    flat_a = traverse_util.flatten_dict(a, sep='/')
    flat_b = traverse_util.flatten_dict(b, sep='/')
    assert flat_a.keys() == flat_b.keys(), what
    for k in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), f'{what}{k}')


def assert_npz_equal(path_a: str, path_b: str) -> None:
    """Two npz files hold the same arrays, bit for bit."""
    with np.load(path_a, allow_pickle=False) as a, np.load(path_b, allow_pickle=False) as b:
        assert sorted(a.files) == sorted(b.files), (path_a, path_b)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], f'{path_b}:{k}')


def assert_files_equal(path_a: str, path_b: str) -> None:
    """Two files with the same bytes (e.g. PNG grids of bit-identical images)."""
    with open(path_a, 'rb') as a, open(path_b, 'rb') as b:
        assert a.read() == b.read(), (path_a, path_b)


def records(workdir: str, drop: Iterable[str] = TIMING_KEYS) -> list[dict]:
    """metrics.jsonl records without the timing fields (which differ between runs)."""
    path = os.path.join(workdir, 'metrics.jsonl')
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    drop = set(drop)
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def load_json(path: str, replace: tuple[str, str] | None = None) -> dict:
    """A JSON file, optionally with one workdir path replaced by another in its text."""
    with open(path) as f:
        text = f.read()
    if replace:
        text = text.replace(*replace)
    return json.loads(text)
