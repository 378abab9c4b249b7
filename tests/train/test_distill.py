"""Knowledge distillation of augmented models: loss, learning, resume, bad input."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import distill_celeba
from tldmi_jax import classifiers, data, models
from tldmi_jax.train import distill
from tldmi_jax.utils import checkpoint

NUM_CLASSES = 4  # The runlocal synthetic data.


@pytest.fixture(scope='module')
def target_dir(tmp_path_factory):
    """An untrained small_tiny target at 32 px, saved like a trainer workdir."""
    path = str(tmp_path_factory.mktemp('target'))
    model = models.get_model('small_tiny', NUM_CLASSES)
    variables = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
    checkpoint.save_model(
        os.path.join(path, 'model_final'), variables['params'], variables['batch_stats']
    )
    with open(os.path.join(path, 'config.json'), 'w') as f:
        json.dump({'model': {'arch': 'small_tiny'}, 'data': {'image_size': 32}}, f)
    return path


def _config(target_dir, **overrides):
    config = distill_celeba.get_config('runlocal')
    config.target.checkpoint = target_dir
    for key, value in overrides.items():
        config[key] = value
    return config


def test_kd_loss_matches_hand_computed_value():
    s = jnp.array([[0.0, 1.0], [2.0, 0.0]])
    t = jnp.array([[0.0, 0.0], [0.0, math.log(3.0)]])
    # Row 1: p = (1/2, 1/2), q = (1, e) / (1 + e). Row 2: p = (1/4, 3/4), q = (e^2, 1) / (e^2 + 1).
    kl1 = 0.5 * math.log(0.5 * (1 + math.e)) + 0.5 * math.log(0.5 * (1 + math.e) / math.e)
    kl2 = 0.25 * math.log(0.25 * (math.e**2 + 1) / math.e**2) + 0.75 * math.log(
        0.75 * (math.e**2 + 1)
    )
    expected = (kl1 + kl2) / 2
    np.testing.assert_allclose(distill.kd_loss(s, t), expected, rtol=1e-6)
    np.testing.assert_allclose(distill.kd_loss(t, t), 0.0, atol=1e-7)
    # T^2 scaling (Hinton) vs the original code's division.
    k2 = distill.kd_loss(s, t, temperature=2.0)
    np.testing.assert_allclose(distill.kd_loss(s, t, 2.0, divide_by_t2=True), k2 / 16, rtol=1e-6)
    soft = (distill.kd_loss(s / 2, t / 2)) * 4
    np.testing.assert_allclose(k2, soft, rtol=1e-6)


def test_step_lr_schedule():
    config = distill_celeba.get_config()
    _, schedule = distill.make_optimizer(config, steps_per_epoch=10)
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(199) == pytest.approx(0.01)
    assert schedule(200) == pytest.approx(0.005)
    assert schedule(400) == pytest.approx(0.0025)


def test_student_kl_to_target_decreases(target_dir):
    config = _config(target_dir)
    target, target_vars = classifiers.load(target_dir)
    model, params, stats = distill.init_student(config, 'efficientnet_b0_tiny', NUM_CLASSES, 0)
    tx, _ = distill.make_optimizer(config, steps_per_epoch=10)
    state = distill.StudentState(
        step=jnp.asarray(0), params=params, batch_stats=stats, opt_state=tx.init(params)
    )
    step = jax.jit(
        distill.make_train_step(model, target, tx, key=jax.random.key(0), temperature=1.0, t2=False)
    )
    public = data.get_source('synthetic', 'public', num_classes=NUM_CLASSES, image_size=32)
    prep = data.get_preprocess('synthetic', 32)
    batch = data.load_all(public, np.arange(16), prep)
    losses = []
    for _ in range(8):
        state, m = step(state, target_vars, {'image': batch['image']})
        losses.append(float(m['train/kd_loss']))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses


def test_student_init_from_pretrained_keeps_fresh_head(tmp_path):
    pretrained = models.get_model('small_tiny', 10)  # e.g. an ImageNet head
    variables = pretrained.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
    path = str(tmp_path / 'pretrained')
    checkpoint.save_model(path, variables['params'], variables['batch_stats'])
    config = distill_celeba.get_config('runlocal')
    config.init.checkpoints.small_tiny = path
    _, params, _ = distill.init_student(config, 'small_tiny', NUM_CLASSES, 1)
    _, fresh, _ = distill.init_student(distill_celeba.get_config('runlocal'), 'small_tiny', 4, 1)
    np.testing.assert_array_equal(
        params['block0']['conv']['kernel'], variables['params']['block0']['conv']['kernel']
    )
    assert params['fc']['kernel'].shape == (16 * 8 * 8, NUM_CLASSES)
    np.testing.assert_array_equal(params['fc']['kernel'], fresh['fc']['kernel'])


def _flat_model(path):
    return traverse_util.flatten_dict(checkpoint.load_model(path), sep='/')


class _Crash(Exception):
    pass


def test_interrupted_run_resumes_to_identical_students(target_dir, tmp_path, monkeypatch):
    clean, crashed = str(tmp_path / 'clean'), str(tmp_path / 'crashed')
    summary = distill.train_and_evaluate(_config(target_dir), clean)

    # Crash right after student 1 saves its first checkpoint (step 5 of 10).
    save_state, saves = checkpoint.save_state, []

    def crashing_save(mngr, step, state):
        save_state(mngr, step, state)
        saves.append(step)
        if len(saves) == 3:
            mngr.wait_until_finished()
            raise _Crash

    monkeypatch.setattr(checkpoint, 'save_state', crashing_save)
    with pytest.raises(_Crash):
        distill.train_and_evaluate(_config(target_dir), crashed)
    assert os.path.exists(os.path.join(crashed, 'student_0_efficientnet_b0_tiny', 'results.json'))
    assert not os.path.exists(os.path.join(crashed, 'student_1_small_tiny', 'model_final'))

    monkeypatch.setattr(checkpoint, 'save_state', save_state)
    restore_latest, restored = checkpoint.restore_latest, []

    def recording_restore(mngr, target):
        out = restore_latest(mngr, target)
        restored.append(out[1])
        return out

    monkeypatch.setattr(checkpoint, 'restore_latest', recording_restore)
    resumed = distill.train_and_evaluate(_config(target_dir), crashed)
    assert restored == [5]  # Student 0 skipped, student 1 resumed.

    for s_clean, s_resumed in zip(summary['students'], resumed['students'], strict=True):
        a = _flat_model(os.path.join(s_clean['dir'], 'model_final'))
        b = _flat_model(os.path.join(s_resumed['dir'], 'model_final'))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        s_resumed = dict(s_resumed, dir=s_clean['dir'])
        assert s_resumed == s_clean

    # The students load as classifiers and agree with the recorded metrics.
    for s in summary['students']:
        model, variables = classifiers.load(s['dir'])
        assert model.num_classes == NUM_CLASSES
        assert 0.0 <= s['holdout/agreement@1'] <= 1.0
        assert 0.0 <= s['test/acc@1'] <= 1.0
        assert np.isfinite(s['holdout/kl'])
        assert models.ARCHS[s['arch']] is type(model)
        del variables
    with open(os.path.join(crashed, 'metrics.jsonl')) as f:
        records = [json.loads(line) for line in f]
    names = [k.split('/')[0] for r in records for k in r if k != 'step']
    assert sorted(set(names)) == ['student_0_efficientnet_b0_tiny', 'student_1_small_tiny']
    assert len(records) == 2
    with open(os.path.join(crashed, 'student_1_small_tiny', 'metrics.jsonl')) as f:
        steps = [json.loads(line)['step'] for line in f if 'train/kd_loss' in line]
    assert steps == [5, 10]


def test_unknown_student_arch(target_dir, tmp_path):
    with pytest.raises(ValueError, match="Unknown student arch 'efficientnet_b9'"):
        distill.train_and_evaluate(
            _config(target_dir, students=('efficientnet_b9',)), str(tmp_path)
        )


def test_missing_target_checkpoint(tmp_path):
    config = distill_celeba.get_config('runlocal')
    config.runlocal = False
    with pytest.raises(ValueError, match='target.checkpoint is required'):
        distill.train_and_evaluate(config, str(tmp_path))
    config.target.checkpoint = str(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='nope'):
        distill.train_and_evaluate(config, str(tmp_path))


def test_target_class_count_mismatch(target_dir, tmp_path):
    config = _config(target_dir)
    config.model.num_classes = 7
    with pytest.raises(ValueError, match='has 4 classes but the config expects 7'):
        distill.train_and_evaluate(config, str(tmp_path))
