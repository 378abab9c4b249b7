"""Model checkpoints and pretrained-weight merging."""

import numpy as np
import pytest

from tldmi_jax.utils import checkpoint

INITED = {
    'conv': {'kernel': np.zeros((3, 3, 1, 4)), 'bias': np.zeros(4)},
    'fc': {'kernel': np.zeros((4, 2))},
}


def test_merge_takes_loaded_except_dont_load():
    loaded = {
        'conv': {'kernel': np.ones((3, 3, 1, 4)), 'bias': np.ones(4)},
        'fc': {'kernel': np.ones((4, 7))},
    }
    merged = checkpoint.merge_params(loaded, INITED, dont_load=('fc/.*',))
    np.testing.assert_array_equal(merged['conv']['kernel'], 1.0)
    np.testing.assert_array_equal(merged['fc']['kernel'], 0.0)


def test_merge_lists_every_mismatch():
    loaded = {
        'conv': {'kernel': np.ones((3, 3, 1, 8))},
        'extra': {'w': np.ones(2)},
        'fc': {'kernel': np.ones((4, 2))},
    }
    with pytest.raises(ValueError) as err:
        checkpoint.merge_params(loaded, INITED)
    message = str(err.value)
    assert "missing from checkpoint: ['conv/bias']" in message
    assert "in checkpoint but not in model: ['extra/w']" in message
    assert 'conv/kernel: checkpoint (3, 3, 1, 8) vs model (3, 3, 1, 4)' in message


def test_save_and_load_model_round_trip(tmp_path):
    params = {'fc': {'kernel': np.arange(6.0, dtype=np.float32).reshape(3, 2)}}
    stats = {'bn': {'mean': np.ones(3, np.float32)}}
    checkpoint.save_model(str(tmp_path / 'run' / 'model_best'), params, stats)
    for path in (tmp_path / 'run' / 'model_best', tmp_path / 'run'):  # model dir or workdir
        tree = checkpoint.load_model(str(path))
        np.testing.assert_array_equal(tree['params']['fc']['kernel'], params['fc']['kernel'])
        np.testing.assert_array_equal(tree['batch_stats']['bn']['mean'], 1.0)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        checkpoint.load_model(str(tmp_path / 'nowhere'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='not a readable orbax model checkpoint'):
        checkpoint.load_model(str(tmp_path / 'empty'))
