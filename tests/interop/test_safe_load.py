"""Checkpoint reading: tensors only, never code; nested state dicts and prefixes."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.payloads import Payload
from tldmi_jax.interop import convert, gan_priors, torch_load

torch = pytest.importorskip('torch')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'fc.weight': torch.zeros(2, 2)}, 'x': Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(torch_load.UnsafeCheckpointError) as err:
        torch_load.load_state_dict(str(path))
    message = str(err.value)
    assert str(path) in message
    assert 'arbitrary code' in message and 'Nothing from it was executed' in message
    assert 'system' in message  # the rejected global is named
    with pytest.raises(torch_load.UnsafeCheckpointError):
        convert.convert_checkpoint('vgg16', str(path), str(tmp_path / 'out'))
    assert not marker.exists()
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('kind', sorted(convert.KINDS))
def test_every_converter_refuses_a_malicious_checkpoint(kind, tmp_path):
    """Each entry point of launch/convert.py, classifier kinds and GAN priors alike."""
    marker = tmp_path / 'marker'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': Payload(marker)}, evil)
    benign = tmp_path / 'benign.pth'
    torch.save({'w': torch.zeros(1)}, benign)
    dst = tmp_path / 'out'
    family = convert.KINDS[kind].prior
    if family:  # A GAN half: converted with the other half; either file may be the bad one.
        for g_src, d_src in ((evil, benign), (benign, evil)):
            with pytest.raises(torch_load.UnsafeCheckpointError):
                gan_priors.convert_prior(family, str(g_src), str(d_src), str(dst))
    else:
        with pytest.raises(torch_load.UnsafeCheckpointError):
            convert.convert_checkpoint(kind, str(evil), str(dst))
    assert not marker.exists()
    assert not dst.exists()


def test_plain_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'w': Payload(marker)}, f, protocol=2)
    with pytest.raises(torch_load.UnsafeCheckpointError, match='Refused to load .*evil.pkl'):
        torch_load.load_state_dict(str(path))
    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / 'whole_model.pth'
    torch.save(torch.nn.Linear(2, 2), path)  # a module, not a state dict: needs its class
    with pytest.raises(torch_load.UnsafeCheckpointError, match='state_dict'):
        torch_load.load_state_dict(str(path))


def test_missing_file_is_named(tmp_path):
    path = tmp_path / 'nope.tar'
    with pytest.raises(FileNotFoundError, match='nope.tar'):
        torch_load.load_state_dict(str(path))


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / 'junk.pth'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='junk.pth'):
        torch_load.load_state_dict(str(path))


def test_nested_and_prefixed_state_dicts(tmp_path):
    weights = {'a.weight': torch.arange(4.0).reshape(2, 2), 'a.bias': torch.ones(2)}
    cases = {
        'plain': weights,
        'state_dict': {'state_dict': weights, 'epoch': 7, 'best_acc': torch.tensor(0.9)},
        'module': {'state_dict': {f'module.{k}': v for k, v in weights.items()}},
        'model': {'model': weights, 'optimizer': {'state': {}, 'param_groups': []}},
        'ddp_in_dp': {f'module.module.{k}': v for k, v in weights.items()},
        'half': {k: v.half() for k, v in weights.items()},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / f'{name}.tar')
        state = torch_load.load_state_dict(str(tmp_path / f'{name}.tar'))
        assert list(state) == ['a.weight', 'a.bias'], name
        assert all(v.dtype == np.float32 for v in state.values()), name
        np.testing.assert_array_equal(state['a.weight'], [[0, 1], [2, 3]])


def test_ambiguous_nesting_needs_a_key(tmp_path):
    path = tmp_path / 'gan.pth'
    torch.save({'G': {'w': torch.zeros(1)}, 'D': {'w': torch.ones(1)}}, path)
    with pytest.raises(ValueError, match=r"cannot tell .*\['G', 'D'\]"):
        torch_load.load_state_dict(str(path))
    assert torch_load.load_state_dict(str(path), key='D')['w'] == 1.0
    with pytest.raises(ValueError, match="no entry 'E'"):
        torch_load.load_state_dict(str(path), key='E')


def test_library_imports_torch_lazily():
    code = (
        'import sys, tldmi_jax.interop, tldmi_jax.interop.convert; '
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _truncated(tmp_path, legacy: bool) -> bytes:
    path = tmp_path / 'whole.pth'
    torch.save({'w': torch.zeros(64)}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    'content, expect',
    [
        (lambda tmp: bytes(range(7, 250)) * 16, 'is not a PyTorch checkpoint: it is neither a zip'),
        (lambda tmp: b'', 'is empty, not a PyTorch checkpoint'),
        (lambda tmp: b'\x80\x02' + bytes(range(200, 256)) * 8, 'its pickle data does not parse'),
        (lambda tmp: _truncated(tmp, legacy=False), 'is a damaged PyTorch checkpoint'),
        (lambda tmp: _truncated(tmp, legacy=True), 'is a truncated PyTorch checkpoint'),
    ],
    ids=['random-bytes', 'empty', 'garbled-pickle', 'truncated-zip', 'truncated-legacy'],
)
def test_a_file_that_is_no_checkpoint_is_named_and_not_called_unsafe(content, expect, tmp_path):
    path = tmp_path / 'model.pth'
    path.write_bytes(content(tmp_path))
    with pytest.raises(ValueError) as err:
        torch_load.load_state_dict(str(path))
    message = str(err.value)
    assert not isinstance(err.value, torch_load.UnsafeCheckpointError)
    assert f'{path} ' in message and expect in message
    assert 'arbitrary code' not in message and 'weights_only' not in message
