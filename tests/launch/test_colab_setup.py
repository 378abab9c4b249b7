"""notebooks/colab_setup.py: runtime detection, the jax range and the pip commands it plans.

Every runtime is faked (environment, `which`, `run`, device listing) and every installed
distribution set is a mapping, so nothing here touches the network or runs pip.
"""

import ast
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'notebooks', 'colab_setup.py')
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'tldmi_colab.ipynb')


def _load():
    spec = importlib.util.spec_from_file_location('colab_setup', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup = _load()

EDITABLE = ['install', '-q', '--no-deps', '-e', '.']
REQUIREMENTS = """\
# Core (a comment line; the blank line below is skipped as well).
jax>=0.10.2,<0.12
jaxlib>=0.10.2,<0.12

flax==0.12.8  # An inline comment.
numpy>=2.0,<3
Pillow[extra]==13.0.0 ; python_version >= "3.11"
"""
OTHERS = ['flax==0.12.8', 'numpy>=2.0,<3', 'Pillow[extra]==13.0.0 ; python_version >= "3.11"']


@pytest.fixture
def requirements(tmp_path):
    path = tmp_path / 'requirements.txt'
    path.write_text(REQUIREMENTS)
    return str(path)


class _Completed:
    def __init__(self, returncode):
        self.returncode = returncode


def _runner(returncode=0, error=None):
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        if error is not None:
            raise error
        return _Completed(returncode)

    return run, calls


def _files(tree):
    """`listdir` and `read_text` over `{directory: {name: contents or None}}`."""

    def listdir(path):
        return list(tree.get(path, {}))

    def read_text(path):
        directory, _, name = path.rpartition('/')
        parent, _, device = directory.rpartition('/')
        contents = tree.get(parent, {}).get(device) or {}
        if name not in contents:
            raise FileNotFoundError(path)
        return contents[name]

    return listdir, read_text


def _detect(env=(), dev=(), pci=None, nvidia_smi=False, returncode=0, error=None):
    tree = {'/dev': dict.fromkeys(dev), setup.PCI_DEVICES: pci or {}}
    listdir, read_text = _files(tree)
    run, calls = _runner(returncode, error)
    which = lambda name: '/usr/bin/nvidia-smi' if nvidia_smi and name == 'nvidia-smi' else None
    runtime = setup.detect_runtime(dict(env), which, run, listdir=listdir, read_text=read_text)
    return runtime, calls


@pytest.mark.parametrize(
    'env',
    [{'COLAB_TPU_ADDR': '10.0.0.2:8470'}, {'TPU_NAME': 'local'}, {'TPU_ACCELERATOR_TYPE': 'v5e-1'}],
)
def test_tpu_from_each_environment_variable(env):
    runtime, calls = _detect(env=env, dev=['null', 'nvidia0'], nvidia_smi=True)
    assert runtime == 'tpu'
    assert calls == []  # A TPU is decided before nvidia-smi is asked.


def test_tpu_from_accel_devices():
    assert _detect(dev=['null', 'accel0', 'accel1'])[0] == 'tpu'


def test_tpu_from_a_google_tpu_chip_on_the_pci_bus():
    pci = {
        '0000:00:04.0': {'vendor': '0x1ae0\n', 'device': '0x0042\n'},  # gVNIC: not a TPU.
        '0000:00:05.0': {'vendor': '0x1ae0\n', 'device': '0x006f\n'},  # TPU v6e.
    }
    assert _detect(pci=pci)[0] == 'tpu'


def test_google_pci_devices_that_are_not_tpus_are_no_tpu():
    pci = {
        '0000:00:04.0': {'vendor': '0x1ae0\n', 'device': '0x0042\n'},
        '0000:00:06.0': {'vendor': '0x10de\n', 'device': '0x0063\n'},  # Another vendor.
        '0000:00:07.0': {},  # Unreadable.
    }
    assert _detect(pci=pci)[0] == 'cpu'


def test_gpu_when_nvidia_smi_runs():
    runtime, calls = _detect(nvidia_smi=True)
    assert runtime == 'gpu'
    assert calls == [['nvidia-smi']]


@pytest.mark.parametrize(
    'kwargs',
    [
        {},
        {'env': {'COLAB_TPU_ADDR': ''}},  # Set but empty: no TPU.
        {'nvidia_smi': True, 'returncode': 9},  # nvidia-smi without a working driver.
        {'nvidia_smi': True, 'error': PermissionError('nvidia-smi')},
        {'nvidia_smi': True, 'error': subprocess.TimeoutExpired('nvidia-smi', 60)},
        {'dev': ['null', 'nvidia0']},  # No nvidia-smi on the PATH.
    ],
)
def test_cpu_otherwise(kwargs):
    assert _detect(**kwargs)[0] == 'cpu'


def test_jax_range_of_the_real_requirements():
    assert setup.jax_range(os.path.join(ROOT, 'requirements.txt')) == ('0.10.2', '0.12')
    assert setup.REQUIREMENTS == os.path.join(ROOT, 'requirements.txt')


def test_jax_range_needs_a_jax_line(tmp_path):
    path = tmp_path / 'no_jax.txt'
    path.write_text('# jax>=0.10.2,<0.12\njaxlib>=0.10.2,<0.12\nflax==0.12.8\n')
    with pytest.raises(ValueError, match='no_jax.txt has no jax requirement line'):
        setup.jax_range(str(path))


def test_jax_range_needs_both_bounds(tmp_path):
    path = tmp_path / 'one_bound.txt'
    path.write_text('jax>=0.10.2,<=0.12\n')
    with pytest.raises(ValueError, match='one_bound.txt.*needs both a >= and a < bound'):
        setup.jax_range(str(path))


def test_pip_options_in_requirements_are_refused(tmp_path):
    path = tmp_path / 'options.txt'
    path.write_text('jax>=0.10.2,<0.12\n-r more.txt\n')
    with pytest.raises(ValueError, match='options.txt:2:.*not a plain requirement'):
        setup.plan('gpu', str(path), {})


@pytest.mark.parametrize(
    'version, expected',
    [
        ('0.10.2', True),
        ('0.10.1', False),
        ('0.9.0', False),
        ('0.10.10', True),  # Numeric, not string, comparison.
        ('0.11.0', True),
        ('0.11.0rc1', True),
        ('0.11', True),
        ('0.11.9.post1', True),
        ('0.11.0+cuda12.cudnn89', True),
        ('0.10.2.post1', True),
        ('0.10.2.dev20260101', False),  # A dev build of the lower bound is below it.
        ('0.10.2rc1', False),
        ('0.10.3.dev20260101', True),
        ('0.12', False),
        ('0.12.0', False),
        ('0.12.0rc1', False),  # Any build of the upper bound's release is out.
        ('0.12.1', False),
        ('1.0.0', False),
        ('v0.11.1', True),
        ('unknown', False),
    ],
)
def test_in_range(version, expected):
    assert setup.in_range(version, '0.10.2', '0.12') is expected


def test_in_range_refuses_a_bad_range():
    with pytest.raises(ValueError, match='not a version range'):
        setup.in_range('0.11.0', 'latest', '0.12')


@pytest.mark.parametrize(
    'distributions, expected',
    [
        ({}, (None, None)),
        ({'flax': '0.12.8'}, (None, None)),
        ({'jax': '0.11.0'}, (None, None)),  # No jaxlib: no working jax.
        ({'jax': '0.11.0', 'jaxlib': '0.11.0'}, ('0.11.0', 'cpu')),
        ({'jax': '0.11.0', 'jaxlib': '0.11.0', 'jax-cuda12-plugin': '0.11.0'}, ('0.11.0', 'gpu')),
        ({'JAX': '0.11.0', 'jaxlib': '0.11.0', 'jax_cuda12_plugin': '0.11.0'}, ('0.11.0', 'gpu')),
        ({'jax': '0.4.23', 'jaxlib': '0.4.23+cuda12.cudnn89'}, ('0.4.23', 'gpu')),
        ({'jax': '0.11.0', 'jaxlib': '0.11.0', 'libtpu': '0.0.20'}, ('0.11.0', 'tpu')),
        ({'jax': '0.11.0', 'jaxlib': '0.11.0', 'libtpu_nightly': '0.1.dev1'}, ('0.11.0', 'tpu')),
    ],
)
def test_installed_jax(distributions, expected):
    assert setup.installed_jax(distributions) == expected


def test_installed_jax_reads_this_environment():
    version, kind = setup.installed_jax()
    assert version == importlib.metadata.version('jax')
    assert kind in ('cpu', 'gpu', 'tpu')


def _jax(version, *accelerator):
    """Installed distributions: jax and jaxlib at `version`, plus `accelerator` names."""
    dists = {'jax': version, 'jaxlib': version}
    for name in accelerator:
        dists[name] = '0.0.20' if name.startswith('libtpu') else version
    return dists


CPU_JAX = _jax('0.11.0')
CUDA_JAX = _jax('0.11.0', 'jax-cuda12-plugin', 'jax-cuda12-pjrt')
TPU_JAX = _jax('0.11.0', 'libtpu')
CUDA = 'jax[cuda12]>=0.10.2,<0.12'
TPU = 'jax[tpu]>=0.10.2,<0.12'
KEEP = None


@pytest.mark.parametrize(
    'runtime, distributions, jax',
    [
        ('gpu', {}, CUDA),
        ('gpu', CPU_JAX, CUDA),
        ('gpu', CUDA_JAX, KEEP),
        ('gpu', {'jax': '0.10.2', 'jaxlib': '0.10.2', 'jax_cuda12_plugin': '0.10.2'}, KEEP),
        ('gpu', _jax('0.9.0', 'jax-cuda12-plugin'), CUDA),
        ('gpu', _jax('0.12.1', 'jax-cuda12-plugin'), CUDA),
        ('gpu', {**CUDA_JAX, 'jaxlib': '0.12.1'}, CUDA),  # jaxlib out of range.
        ('gpu', {**CUDA_JAX, 'jax-cuda12-plugin': '0.12.1'}, CUDA),  # The plugin out of range.
        ('gpu', TPU_JAX, CUDA),
        ('tpu', {}, TPU),
        ('tpu', CPU_JAX, TPU),
        ('tpu', TPU_JAX, KEEP),
        ('tpu', _jax('0.10.2', 'libtpu-nightly'), KEEP),
        ('tpu', _jax('0.9.0', 'libtpu'), TPU),
        ('tpu', _jax('0.12.1', 'libtpu'), TPU),
        ('tpu', {'jax': '0.11.0', 'libtpu': '0.0.20'}, TPU),  # No jaxlib.
        ('tpu', CUDA_JAX, TPU),
    ],
)
def test_plan_on_accelerators(requirements, runtime, distributions, jax):
    first = ['install', '-q', *([jax] if jax else []), *OTHERS]
    assert setup.plan(runtime, requirements, distributions) == [first, EDITABLE]
    line = setup.decision(runtime, requirements, distributions)
    assert line.startswith(
        'jax: keeping the installed jax 0.1' if jax is KEEP else f'jax: installing {jax}'
    )


@pytest.mark.parametrize('distributions', [{}, CPU_JAX, CUDA_JAX, TPU_JAX, _jax('0.9.0')])
def test_plan_on_cpu_installs_the_requirements_file(requirements, distributions):
    expected = [['install', '-q', '-r', requirements], EDITABLE]
    assert setup.plan('cpu', requirements, distributions) == expected
    assert setup.decision('cpu', requirements, distributions).startswith(
        'jax: requirements.txt (jax>=0.10.2,<0.12)'
    )


def test_plan_on_the_real_requirements():
    path = os.path.join(ROOT, 'requirements.txt')
    (first, editable) = setup.plan('gpu', path, CPU_JAX)
    assert editable == EDITABLE
    assert first[:3] == ['install', '-q', CUDA]
    assert 'flax==0.12.8' in first and 'numpy>=2.0,<3' in first
    assert not any(arg.startswith(('jax>', 'jaxlib')) for arg in first)
    assert not any('#' in arg for arg in first)
    (kept, _) = setup.plan('tpu', path, TPU_JAX)
    assert kept == [first[0], first[1], *first[3:]]


def test_plan_refuses_an_unknown_runtime(requirements):
    with pytest.raises(ValueError, match="unknown runtime 'rocm'"):
        setup.plan('rocm', requirements, {})


def test_main_runs_pip_with_this_python_from_the_root(monkeypatch, capsys):
    run, calls = _runner()
    monkeypatch.setattr(setup, 'detect_runtime', lambda: 'gpu')
    monkeypatch.setattr(setup, 'installed_distributions', lambda: dict(CUDA_JAX))
    monkeypatch.setattr(setup.subprocess, 'run', lambda argv, **kwargs: run((argv, kwargs)))
    setup.main()
    commands = setup.plan('gpu', setup.REQUIREMENTS, CUDA_JAX)
    assert calls == [
        ([sys.executable, '-m', 'pip', *c], {'check': True, 'cwd': ROOT}) for c in commands
    ]
    assert capsys.readouterr().out.splitlines() == [
        'runtime: gpu',
        'jax: keeping the installed jax 0.11.0 (gpu), within >=0.10.2,<0.12',
    ]


def test_script_imports_the_standard_library_only():
    with open(SCRIPT, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split('.')[0])
    assert imported and imported <= set(sys.stdlib_module_names), imported


def test_notebook_install_cell_runs_the_script():
    with open(NOTEBOOK, encoding='utf-8') as f:
        nb = json.load(f)
    sources = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code']
    install = [s for s in sources if 'if INSTALL:' in s]
    assert len(install) == 1
    branch = install[0].split('if INSTALL:', 1)[1]
    assert "subprocess.run([sys.executable, 'notebooks/colab_setup.py'], check=True)" in branch
    assert 'jax[cuda12]' not in install[0] and 'pip' not in branch
    assert "os.chdir('tldmi_jax')" in install[0]  # The clone logic runs before the script.
