"""The trainers' loop: schedule, resume mid-epoch, NaN/inf stop, hooks, log records."""

import json
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tldmi_jax.train import loop
from tldmi_jax.utils import checkpoint, metrics, sharding
from tldmi_jax.utils import loop as steps

# 10 examples whose pixels and label are their index; batches of 3: 3 steps an epoch.
SOURCE = [{'image': np.full((2, 2, 1), i, np.uint8), 'label': i} for i in range(10)]
TOTAL = 8


class State(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any


def _state():
    return State(step=jnp.asarray(0, jnp.int32), params={'w': jnp.zeros(2, jnp.float32)})


class Recorder:
    """A step function that logs the labels of each batch; non-finite from `bad_step` on."""

    def __init__(self, bad_step=None, bad='loss'):
        self.labels: dict[int, list[int]] = {}
        self.bad_step, self.bad = bad_step, bad

    def __call__(self, state, batch, step):
        self.labels[step + 1] = np.asarray(batch['label']).tolist()
        loss = jnp.mean(batch['image'])
        update = loss
        if self.bad_step is not None and step + 1 >= self.bad_step:
            if self.bad == 'loss':
                loss = jnp.float32(np.nan)
            else:
                update = jnp.float32(np.inf)
        new = state.replace(step=state.step + 1, params={'w': state.params['w'] + update})
        return new, {'train/loss': loss, 'train/acc@1': jnp.float32(step % 2)}


def _loop(workdir, **kwargs):
    kw = dict(desc='demo', log_every=3, checkpoint_every=2)
    kw.update(kwargs)
    return loop.TrainLoop(str(workdir), steps.make_schedule(10, 3, 3, TOTAL), **kw)


def _train(workdir, step_fn=None, hooks=(), extras=None, train=None, **kwargs):
    step_fn = step_fn or Recorder()
    train = train or _loop(workdir, **kwargs)
    state = train.resume(_state())
    batches = loop.shuffled_batches(
        SOURCE, np.arange(10), 3, preprocess=lambda x: x.astype(np.float32), seed=0
    )
    mesh = sharding.data_mesh(3)
    state = train.run(state, batches, step_fn, mesh, hooks=hooks, extras=extras)
    return train, state, step_fn


def test_schedule_from_config():
    config = ml_collections.ConfigDict(dict(batch_size=3, epochs=2, total_steps=0))
    sched = loop.schedule(config, 10, 'images')
    assert (sched.steps_per_epoch, sched.total_steps) == (3, 6)
    config.total_steps = 5
    assert loop.schedule(config, 10, 'images').total_steps == 5
    assert [s for s in range(1, 9) if sched.due(s, sched.every(None))] == [3, 6]
    with pytest.raises(ValueError, match='Batch size 3 exceeds the 2 public images'):
        loop.schedule(config, 2, 'public images')


def test_hooks_run_at_their_steps_and_may_change_the_state(tmp_path):
    calls = {'epoch': [], 'every4': []}

    def record(name, bump):
        def fn(step, state):
            calls[name].append(step)
            return state.replace(params={'w': state.params['w'] + bump})

        return fn

    hooks = [loop.Periodic(None, record('epoch', 0.0)), loop.Periodic(4, record('every4', 100.0))]
    train, state, _ = _train(tmp_path, hooks=hooks)
    assert calls == {'epoch': [3, 6, 8], 'every4': [4, 8]}
    assert train.step == TOTAL and int(state.step) == TOTAL
    assert float(state.params['w'][0]) > 200.0  # The hooks' states were kept.


def test_resume_mid_epoch_replays_the_same_batches(tmp_path):
    _, clean, clean_steps = _train(tmp_path / 'clean')
    assert sorted(clean_steps.labels) == list(range(1, TOTAL + 1))
    # Each epoch covers 9 of the 10 examples, in an order of its own.
    assert len(set(sum((clean_steps.labels[s] for s in (1, 2, 3)), []))) == 9
    assert clean_steps.labels[1] != clean_steps.labels[4]

    class Stop(Exception):
        pass

    stopped = _loop(tmp_path / 'resumed')

    def stop(step, state):
        stopped.mngr.wait_until_finished()  # The checkpoint of step 4 is written.
        raise Stop

    with pytest.raises(Stop):  # Stops at step 5, after the checkpoint of step 4.
        _train(tmp_path / 'resumed', hooks=[loop.Periodic(5, stop)], train=stopped)
    train, resumed, resumed_steps = _train(tmp_path / 'resumed')
    assert sorted(resumed_steps.labels) == [5, 6, 7, 8]  # Epoch 1, from its second batch.
    for step, labels in resumed_steps.labels.items():
        assert labels == clean_steps.labels[step], step
    np.testing.assert_array_equal(resumed.params['w'], clean.params['w'])
    logged = [r['step'] for r in metrics.read_metrics(str(tmp_path / 'resumed'))]
    assert logged == [3, 6, 8]  # Each step logged once.


@pytest.mark.parametrize(
    'bad, message, logged',
    [
        # Caught when step 6's losses are fetched for its log record.
        ('loss', 'non-finite loss at step 6 (train/loss=nan)', [3]),
        # Finite losses are logged; the parameters are caught before step 6's checkpoint.
        ('params', 'non-finite parameters after step 6', [3, 6]),
    ],
)
def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, bad, message, logged):
    with pytest.raises(steps.NonFiniteError) as err:
        _train(tmp_path, step_fn=Recorder(bad_step=6, bad=bad))
    assert str(err.value).startswith(message)
    assert 'the last good checkpoint (step 4) is kept' in str(err.value)
    assert f'last finite metrics (step {logged[-1]})' in str(err.value)
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
    assert [r['step'] for r in metrics.read_metrics(str(tmp_path))] == logged


def test_log_records_progress_bar_and_finish(tmp_path, capsys):
    train, state, recorder = _train(tmp_path, extras=lambda step: {'train/lr': 0.1 * step})
    records = metrics.read_metrics(str(tmp_path))
    assert [r['step'] for r in records] == [3, 6, 8]
    for r, window in zip(records, [(1, 2, 3), (4, 5, 6), (7, 8)], strict=True):
        assert list(r) == [
            'step',
            'train/loss',
            'train/acc@1',
            'train/images_per_sec',
            'train/epoch',
            'train/lr',
        ]
        mean_pixel = np.mean([np.mean(recorder.labels[s]) for s in window])
        np.testing.assert_allclose(r['train/loss'], mean_pixel, rtol=1e-6)
        assert r['train/acc@1'] == pytest.approx(np.mean([(s - 1) % 2 for s in window]))
        assert r['train/epoch'] == r['step'] / 3 and r['train/images_per_sec'] > 0
        assert r['train/lr'] == pytest.approx(0.1 * r['step'])
    assert train.last == {k: v for k, v in records[-1].items() if k != 'step'}
    assert 'demo' in capsys.readouterr().err  # The progress bar.
    shown = loop.postfix({**train.last, 'train/grad_norm': 2.0, 'train/images_per_sec': 99.6})
    assert shown == {
        'train/loss': f'{train.last["train/loss"]:.4g}',
        'train/acc@1': f'{train.last["train/acc@1"]:.4g}',
        'img/s': '100',
    }
    train.finish({'final/acc@1': 0.5})
    assert metrics.read_metrics(str(tmp_path))[-1] == {'step': TOTAL, 'final/acc@1': 0.5}
    assert json.load(open(tmp_path / 'results.json')) == {'final/acc@1': 0.5}
    assert checkpoint.manager(str(tmp_path / 'checkpoints')).latest_step() == TOTAL
