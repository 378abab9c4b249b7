"""Model checkpoints, pretrained-weight merging and resuming past a damaged step."""

import gc
import os
import sys
import time

import ml_collections
import numpy as np
import pytest

from tldmi_jax.utils import checkpoint, metrics, workdir

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


# --- damaged training checkpoints -------------------------------------------------------

STATE = {'w': np.zeros(4096, np.float32), 'b': np.zeros(3, np.float32)}


def _run_with_steps(workdir, steps):
    """A workdir whose `checkpoints/` holds `steps` (state value = step) and their metrics."""
    mngr = checkpoint.manager(str(workdir / 'checkpoints'), max_to_keep=5)
    with open(workdir / 'metrics.jsonl', 'w') as f:
        for step in steps:
            checkpoint.save_state(mngr, step, {k: v + step for k, v in STATE.items()})
            f.write(f'{{"step": {step}, "loss": 1.0}}\n')
    mngr.wait_until_finished()
    mngr.close()


def _damage(step_dir):
    """Truncates the largest file of a saved step (a crash mid-copy, a bad disk)."""
    files = [p for p in step_dir.rglob('*') if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    with open(largest, 'r+b') as f:
        f.truncate(largest.stat().st_size // 2)


@pytest.fixture
def warnings(monkeypatch):
    logged = []
    monkeypatch.setattr(checkpoint.logging, 'warning', lambda msg, *args: logged.append(msg % args))
    return logged


def test_a_damaged_latest_step_falls_back_to_the_newest_readable_one(tmp_path, warnings):
    _run_with_steps(tmp_path, (10, 20, 30))
    _damage(tmp_path / 'checkpoints' / '30')
    mngr, state, step = checkpoint.resume(str(tmp_path), STATE, keep=5)
    assert step == 20
    np.testing.assert_array_equal(state['w'], 20.0)
    assert len(warnings) == 1 and 'step 30' in warnings[0] and 'step 20 instead' in warnings[0]
    assert str(tmp_path / 'checkpoints') in warnings[0] and '30.damaged' in warnings[0]
    assert mngr.all_steps() == [10, 20] and not (tmp_path / 'checkpoints' / '30').exists()
    assert (tmp_path / 'checkpoints' / '30.damaged').is_dir()  # Kept aside, never read.
    assert [r['step'] for r in metrics.read_metrics(str(tmp_path))] == [10, 20]
    checkpoint.save_state(mngr, 30, {k: v + 31 for k, v in STATE.items()})  # No tripping.
    mngr.wait_until_finished()
    assert mngr.all_steps() == [10, 20, 30]
    mngr.close()
    assert checkpoint.resume(str(tmp_path), STATE, keep=5)[2] == 30


def test_no_readable_step_is_one_line_naming_the_directory(tmp_path):
    _run_with_steps(tmp_path, (10, 20))
    for step in ('10', '20'):
        _damage(tmp_path / 'checkpoints' / step)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.resume(str(tmp_path), STATE)
    message = str(err.value)
    assert '\n' not in message and len(message) < 600
    assert f'no readable checkpoint in {tmp_path / "checkpoints"}' in message
    assert 'steps 20, 10' in message and '--config.overwrite=True' in message
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '20']  # Nothing deleted.


def test_with_overwrite_no_readable_step_starts_afresh(tmp_path, warnings):
    _run_with_steps(tmp_path, (10, 20))
    for step in ('10', '20'):
        _damage(tmp_path / 'checkpoints' / step)
    config = ml_collections.ConfigDict({'seed': 0, 'overwrite': True})
    workdir.prepare(config, str(tmp_path))
    try:
        mngr, state, step = checkpoint.resume(str(tmp_path), STATE)
    finally:
        workdir.release_all()
    assert step is None and state is STATE and mngr.all_steps() == []
    assert 'starting afresh' in warnings[0]
    assert metrics.read_metrics(str(tmp_path)) == []


def test_a_failed_read_leaves_no_closed_event_loop_noise(tmp_path, monkeypatch):
    """Reads still in flight when a restore fails must not print tracebacks afterwards."""
    rng = np.random.default_rng(0)
    params = {f'conv{i}': {'kernel': rng.normal(size=(3, 3, 32, 32))} for i in range(16)}
    checkpoint.save_model(str(tmp_path / 'model'), params, {})
    _damage(tmp_path / 'model')
    seen = []
    monkeypatch.setattr(sys, 'unraisablehook', seen.append)
    gc.freeze()  # The collections below look only at what the reads made (a full one: ~0.6 s).
    try:
        for _ in range(3):
            with pytest.raises(ValueError, match='is not a readable orbax model checkpoint'):
                checkpoint.load_model(str(tmp_path / 'model'))
            time.sleep(0.2)
            gc.collect()
    finally:
        gc.unfreeze()
    assert not [u for u in seen if 'Event loop is closed' in str(u.exc_value)]
