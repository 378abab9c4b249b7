"""Installs tldmi_jax's requirements on Colab (or a fresh machine) for its runtime.

Run from anywhere before anything is installed: `python notebooks/colab_setup.py`. It uses the
standard library only, since jax, packaging and tldmi_jax may not be installed yet, and it
never imports jax (an import would pin the jax that the kernel then sees).

What it does, on the runtime `detect_runtime` finds:

- `tpu`: keeps a preinstalled jax with libtpu when jax and jaxlib are in the range of
  requirements.txt; otherwise installs `jax[tpu]` in that range (the TPU wheels and libtpu
  are on PyPI since jax 0.4, so no find-links URL is needed). The other requirements are
  installed by name with their pins, never the CPU jax lines.
- `gpu`: the same with the CUDA 12 plugin and `jax[cuda12]`.
- `cpu`: `pip install -r requirements.txt`, jax included.

Then `pip install --no-deps -e .` installs the package itself. `plan` returns these pip
commands without running them; `main` runs them. The jax range is read from requirements.txt
(its `jax` line), so the two cannot disagree.
"""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(ROOT, 'requirements.txt')

# Environment variables that only a TPU runtime sets: COLAB_TPU_ADDR on Colab's older TPU
# node runtimes, TPU_NAME / TPU_ACCELERATOR_TYPE on TPU VMs.
TPU_ENV_VARS = ('COLAB_TPU_ADDR', 'TPU_NAME', 'TPU_ACCELERATOR_TYPE')
# The PCI ids by which jax itself finds TPU chips (jax/_src/hardware_utils.py): Google's
# vendor id and the device ids of TPU v3 to TPU7x. Newer TPU VMs (v5e, v6e) expose their
# chips through vfio rather than /dev/accel*, so this covers them when no variable is set.
GOOGLE_PCI_VENDOR = '0x1ae0'
TPU_PCI_DEVICES = frozenset({'0x0027', '0x0056', '0x005e', '0x0062', '0x0063', '0x006f', '0x0076'})
PCI_DEVICES = '/sys/bus/pci/devices'

# Distributions (canonical names) whose presence tells which backend an installed jax runs.
TPU_DISTRIBUTIONS = ('libtpu', 'libtpu-nightly')
CUDA_DISTRIBUTIONS = ('jax-cuda12-plugin', 'jax-cuda12-pjrt')
# Requirement lines that `plan` replaces by an accelerator build of jax.
JAX_NAMES = ('jax', 'jaxlib')
EXTRAS = {'tpu': 'tpu', 'gpu': 'cuda12'}
PIP_INSTALL = ('install', '-q')

_NAME = re.compile(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$')
_RELEASE = re.compile(r'\s*v?(\d+(?:\.\d+)*)(.*)$', re.IGNORECASE)
_PRE_RELEASE = re.compile(r'[-_.]?(a|b|c|rc|alpha|beta|pre|preview|dev)\d*', re.IGNORECASE)


def canonical(name: str) -> str:
    """The PEP 503 form of a distribution name: lower case, runs of `-_.` as one `-`."""
    return re.sub(r'[-_.]+', '-', name).lower()


def _read_text(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _has_tpu_pci_device(listdir: Callable, read_text: Callable) -> bool:
    """Whether a PCI device has Google's vendor id and a TPU device id."""
    for device in listdir(PCI_DEVICES):
        try:
            vendor = read_text(f'{PCI_DEVICES}/{device}/vendor').strip()
            if vendor != GOOGLE_PCI_VENDOR:
                continue
            if read_text(f'{PCI_DEVICES}/{device}/device').strip() in TPU_PCI_DEVICES:
                return True
        except OSError:
            continue
    return False


def detect_runtime(
    env: Mapping[str, str] = os.environ,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable = subprocess.run,
    listdir: Callable[[str], list[str]] = _listdir,
    read_text: Callable[[str], str] = _read_text,
) -> str:
    """The kind of runtime this process is on: 'tpu', 'gpu' or 'cpu'.

    A TPU is recognised, in this order, by a non-empty `TPU_ENV_VARS` variable, an
    `/dev/accel*` device, or a TPU chip on the PCI bus; a GPU by an `nvidia-smi` on the PATH
    that exits with 0. Anything else is a CPU runtime.

    Args:
        env: The environment variables.
        which: `shutil.which`: the path of a program, or None.
        run: `subprocess.run`: runs `nvidia-smi` (called with `capture_output` and `timeout`).
        listdir: The entries of a directory (an empty list when it cannot be read).
        read_text: The contents of a file (raises OSError when it cannot be read).

    Returns:
        'tpu', 'gpu' or 'cpu'.
    """
    if any(env.get(name) for name in TPU_ENV_VARS):
        return 'tpu'
    if any(name.startswith('accel') for name in listdir('/dev')):
        return 'tpu'
    if _has_tpu_pci_device(listdir, read_text):
        return 'tpu'
    if which('nvidia-smi'):
        try:
            if run(['nvidia-smi'], capture_output=True, timeout=60).returncode == 0:
                return 'gpu'
        except (OSError, subprocess.SubprocessError):
            pass
    return 'cpu'


def requirement_lines(requirements_path: str) -> list[tuple[str, str]]:
    """`(canonical name, requirement)` for each requirement of a requirements file.

    Blank lines and comments (whole-line, or after whitespace) are dropped. The requirement
    is the line as pip reads it (version specifiers and markers kept), without its comment.

    Raises:
        ValueError: A line holds a pip option (`-r`, `--index-url`, ...) or no requirement:
            `plan` could not pass it on by name.
    """
    found = []
    with open(requirements_path, encoding='utf-8') as f:
        for number, line in enumerate(f, start=1):
            text = re.sub(r'(^|\s)#.*', '', line).strip()
            if not text:
                continue
            match = _NAME.match(text)
            if text.startswith('-') or not match:
                raise ValueError(
                    f'{requirements_path}:{number}: {text!r} is not a plain requirement; '
                    'notebooks/colab_setup.py passes requirements to pip one by one'
                )
            found.append((canonical(match.group(1)), text))
    return found


def jax_range(requirements_path: str) -> tuple[str, str]:
    """The `>=` lower and `<` upper bounds of the `jax` line of a requirements file.

    Raises:
        ValueError: The file has no `jax` line, or that line lacks one of the two bounds.
    """
    for name, text in requirement_lines(requirements_path):
        if name != 'jax':
            continue
        specifiers = _NAME.match(text).group(2).split(';')[0]
        low = high = None
        for spec in specifiers.split(','):
            spec = spec.strip()
            if spec.startswith('>='):
                low = spec[2:].strip()
            elif spec.startswith('<') and not spec.startswith('<='):
                high = spec[1:].strip()
        if low is None or high is None:
            raise ValueError(
                f'{requirements_path}: the jax line {text!r} needs both a >= and a < bound'
            )
        return low, high
    raise ValueError(f'{requirements_path} has no jax requirement line (jax>=LOW,<HIGH)')


def _release(version: str) -> tuple[tuple[int, ...], bool] | None:
    """`(numeric release, whether a pre-release or dev build)`, or None if unparsable."""
    match = _RELEASE.match(version)
    if not match:
        return None
    release = tuple(int(part) for part in match.group(1).split('.'))
    suffix = match.group(2).split('+')[0]
    return release, bool(_PRE_RELEASE.match(suffix))


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def in_range(version: str, low: str, high: str) -> bool:
    """Whether `low <= version < high`, as pip would decide for `>=low,<high`.

    The rule: only the numeric release part (`0.11.0` of `0.11.0rc1`, `0.10.2` of
    `0.10.2.post1+cuda12`) is compared, padded with zeros (`0.12` == `0.12.0`). Two cases
    follow PEP 440: a pre-release or dev build (`rc`, `a`, `b`, `dev`, ...) of the lower bound
    itself is below it (`0.10.2.dev20260101` < `0.10.2`), and any build of the upper bound's
    release is out (`0.12.0rc1` fails `<0.12`). Post releases and local labels do not matter.
    An unparsable version is out of range.

    Raises:
        ValueError: `low` or `high` is not a version.
    """
    bounds = _release(low), _release(high)
    if None in bounds:
        raise ValueError(f'not a version range: >={low},<{high}')
    parsed = _release(version)
    if parsed is None:
        return False
    release, pre = parsed
    lowest, below = _pad(release, bounds[0][0]), _pad(release, bounds[1][0])
    above_low = lowest[0] > lowest[1] or (lowest[0] == lowest[1] and not pre)
    return above_low and below[0] < below[1]


def installed_distributions() -> dict[str, str]:
    """`{canonical name: version}` of the distributions this Python sees.

    Read with `importlib.metadata` from the installed metadata (`*.dist-info`), so nothing is
    imported; where a name is installed twice the first on `sys.path` wins, as on import.
    """
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata['Name']
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def installed_jax(
    distributions: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """The installed jax version and the backend it runs on, without importing jax.

    The backend is 'tpu' if libtpu (or libtpu-nightly) is installed, 'gpu' if the CUDA 12
    plugin is (`jax-cuda12-plugin` or `jax-cuda12-pjrt`, or an old jaxlib with `cuda` in its
    local version), else 'cpu'. Installed metadata is what pip itself decides on, and reading
    it does not load an accelerator (which an import of jax would).

    Args:
        distributions: `{name: version}` of the installed distributions (names in any
            spelling); None reads them with `installed_distributions`.

    Returns:
        `(jax version, 'tpu' | 'gpu' | 'cpu')`, or `(None, None)` if jax or jaxlib is
        missing.
    """
    if distributions is None:
        distributions = installed_distributions()
    dists = {canonical(name): version for name, version in distributions.items()}
    if 'jax' not in dists or 'jaxlib' not in dists:
        return None, None
    if any(name in dists for name in TPU_DISTRIBUTIONS):
        kind = 'tpu'
    elif any(name in dists for name in CUDA_DISTRIBUTIONS) or 'cuda' in dists['jaxlib']:
        kind = 'gpu'
    else:
        kind = 'cpu'
    return dists['jax'], kind


def keeps_installed_jax(
    runtime: str, low: str, high: str, distributions: Mapping[str, str]
) -> bool:
    """Whether an accelerator runtime already has a jax for itself within `>=low,<high`.

    Both jax and jaxlib must be in the range, and so must the CUDA plugin if there is one
    (libtpu has its own version numbers).
    """
    _, kind = installed_jax(distributions)
    if runtime not in EXTRAS or kind != runtime:
        return False
    dists = {canonical(name): v for name, v in distributions.items()}
    checked = [dists['jax'], dists['jaxlib']]
    checked += [dists[name] for name in CUDA_DISTRIBUTIONS if name in dists]
    return all(in_range(v, low, high) for v in checked)


def plan(runtime: str, requirements_path: str, distributions: Mapping[str, str]) -> list[list[str]]:
    """The pip commands (arguments after `python -m pip`) that set up `runtime`.

    - cpu: `install -q -r REQUIREMENTS`.
    - tpu / gpu with an in-range jax for that accelerator (`keeps_installed_jax`): every
      requirement but jax and jaxlib, by name, with its pins.
    - tpu / gpu otherwise: the same, with `jax[tpu]>=LOW,<HIGH` (or `jax[cuda12]`) in the
      same command, so that pip resolves it together with flax and the other pins.

    Each plan ends with `install -q --no-deps -e .` (run from the repository root).

    Raises:
        ValueError: An unknown runtime, or a requirements file without a jax range.
    """
    if runtime not in ('tpu', 'gpu', 'cpu'):
        raise ValueError(f"unknown runtime {runtime!r}: expected 'tpu', 'gpu' or 'cpu'")
    low, high = jax_range(requirements_path)
    editable = [*PIP_INSTALL, '--no-deps', '-e', '.']
    if runtime == 'cpu':
        return [[*PIP_INSTALL, '-r', requirements_path], editable]
    others = [text for name, text in requirement_lines(requirements_path) if name not in JAX_NAMES]
    accelerator_jax = []
    if not keeps_installed_jax(runtime, low, high, distributions):
        accelerator_jax = [f'jax[{EXTRAS[runtime]}]>={low},<{high}']
    return [[*PIP_INSTALL, *accelerator_jax, *others], editable]


def decision(runtime: str, requirements_path: str, distributions: Mapping[str, str]) -> str:
    """One line that says what `plan` does about jax, and why."""
    low, high = jax_range(requirements_path)
    version, kind = installed_jax(distributions)
    found = f'jax {version} ({kind})' if version else 'no jax'
    if runtime == 'cpu':
        return f'jax: requirements.txt (jax>={low},<{high}); installed: {found}'
    if keeps_installed_jax(runtime, low, high, distributions):
        return f'jax: keeping the installed {found}, within >={low},<{high}'
    return f'jax: installing jax[{EXTRAS[runtime]}]>={low},<{high}; installed: {found}'


def main() -> None:
    """Detects the runtime, prints it and the jax decision, and runs the pip commands."""
    runtime = detect_runtime()
    distributions = installed_distributions()
    commands = plan(runtime, REQUIREMENTS, distributions)
    # Printed first, so that a failing pip command still shows what was attempted.
    print(f'runtime: {runtime}')
    print(decision(runtime, REQUIREMENTS, distributions))
    for command in commands:
        subprocess.run([sys.executable, '-m', 'pip', *command], check=True, cwd=ROOT)


if __name__ == '__main__':
    main()
