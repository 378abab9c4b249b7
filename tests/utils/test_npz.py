"""Damaged `.npz`/`.npy` files: inputs stop with the file named, caches are rebuilt."""

import numpy as np
import pytest

from tldmi_jax.utils import npz


def _damaged(tmp_path, how: str):
    path = tmp_path / ('file.npy' if how.endswith('npy') else 'file.npz')
    if how.endswith('npy'):
        np.save(path, np.arange(1000.0))
    else:
        np.savez(path, a=np.arange(1000.0), b=np.ones(3))
    data = path.read_bytes()
    if how.startswith('truncated'):
        path.write_bytes(data[: len(data) // 2])
    elif how == 'bit-flip':
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif how == 'random':
        path.write_bytes(bytes(range(256)) * 4)
    elif how == 'empty':
        path.write_bytes(b'')
    return path


@pytest.mark.parametrize('how', ['truncated', 'bit-flip', 'random', 'empty', 'truncated-npy'])
def test_a_damaged_input_names_the_file_and_the_fix(tmp_path, how):
    path = _damaged(tmp_path, how)
    load = npz.load_array if how.endswith('npy') else npz.load
    with pytest.raises(npz.NpzError) as err:
        load(str(path), 'reconstructions', fix='rerun the attack')
    message = str(err.value)
    assert message.startswith(f'{path}: cannot read the reconstructions (')
    assert message.endswith('; rerun the attack') and '\n' not in message
    assert 'allow_pickle' not in message and 'unsafe' not in message


@pytest.mark.parametrize('how', ['truncated', 'bit-flip', 'random', 'empty', 'truncated-npy'])
def test_a_damaged_cache_is_rebuilt(tmp_path, how):
    path = _damaged(tmp_path, how)
    load = npz.load_cached_array if how.endswith('npy') else npz.load_cache
    assert load(str(path), 'feature cache') is None
    assert npz.load_cache(str(tmp_path / 'absent.npz'), 'feature cache') is None


def test_sound_files_and_a_missing_input(tmp_path):
    np.savez(tmp_path / 'a.npz', x=np.arange(3))
    np.save(tmp_path / 'b.npy', np.ones(2))
    assert npz.load(str(tmp_path / 'a.npz'), 'x')['x'].tolist() == [0, 1, 2]
    assert npz.load_cache(str(tmp_path / 'a.npz'), 'x')['x'].tolist() == [0, 1, 2]
    assert npz.load_array(str(tmp_path / 'b.npy'), 'x').tolist() == [1.0, 1.0]
    with pytest.raises(npz.NpzError, match='a single .npy array where an .npz archive'):
        npz.load(str(tmp_path / 'b.npy'), 'x')
    with pytest.raises(FileNotFoundError):
        npz.load(str(tmp_path / 'missing.npz'), 'x')
