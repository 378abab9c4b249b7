"""MID: the VIB KL against its closed form, the wrapper's parameters, groups and modes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from tldmi_jax import models
from tldmi_jax.defenses import mid, transfer


def test_kl_matches_closed_form():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 5)).astype(np.float32)
    std = rng.uniform(0.2, 2.0, size=(3, 5)).astype(np.float32)
    got = np.asarray(mid.kl_divergence(jnp.asarray(mu), jnp.asarray(std)))
    for i in range(3):
        # KL(N(mu, S) || N(0, I)) = (tr S + mu^T mu - k - log det S) / 2, S = diag(std^2).
        cov = np.diag(std[i].astype(np.float64) ** 2)
        expected = 0.5 * (np.trace(cov) + mu[i] @ mu[i] - 5 - np.linalg.slogdet(cov)[1])
        np.testing.assert_allclose(got[i], expected, rtol=1e-5)
    np.testing.assert_allclose(mid.kl_divergence(jnp.zeros((1, 4)), jnp.ones((1, 4))), [0.0])


def test_kl_matches_monte_carlo():
    mu, std = jnp.array([[0.5, -1.0]]), jnp.array([[0.7, 1.3]])
    z = mu + std * jax.random.normal(jax.random.key(0), (200_000, 2))
    log_q = jnp.sum(-0.5 * ((z - mu) / std) ** 2 - jnp.log(std), -1)
    log_p = jnp.sum(-0.5 * z**2, -1)
    np.testing.assert_allclose(mid.kl_divergence(mu, std)[0], jnp.mean(log_q - log_p), rtol=2e-2)


def _init(model, size=32):
    init = jax.jit(functools.partial(model.init, train=False))  # One program (test time).
    return init(jax.random.key(0), jnp.zeros((2, size, size, 3)))


def _shapes(model, size=32):
    """`_init`'s shapes, without running it."""
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def test_wrapper_keeps_inner_names_and_adds_vib():
    inner = models.get_model('vgg16_tiny', 4)
    wrapped = mid.wrap(inner)
    plain = traverse_util.flatten_dict(_shapes(inner)['params'], sep='/')
    params = traverse_util.flatten_dict(_shapes(wrapped)['params'], sep='/')
    assert set(params) == set(plain) | {'vib/kernel', 'vib/bias'}
    d = plain['fc/kernel'].shape[0]  # Feature size (256 for the tiny VGG at 32 px).
    assert params['vib/kernel'].shape == (d, d)  # 2k with k = d // 2.
    assert params['fc/kernel'].shape == (d // 2, 4)
    small = _shapes(mid.wrap(inner, k=3))['params']
    assert small['fc']['kernel'].shape == (3, 4) and small['vib']['kernel'].shape == (d, 6)


def test_inference_uses_mean_training_samples():
    model = mid.wrap(models.get_model('small_tiny', 3), k=4)
    variables = _init(model, 16)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))

    @jax.jit  # One program for every comparison below (test time).
    def outputs(variables, x):
        _, logits = model.apply(variables, x)
        (_, again), state = model.apply(variables, x, train=False, mutable=['intermediates'])
        mean, _ = mid.statistics(state['intermediates'])
        fc = variables['params']['fc']
        (_, sampled), state = model.apply(
            variables,
            x,
            train=True,
            rngs={'dropout': jax.random.key(2)},
            mutable=['batch_stats', 'intermediates'],
        )
        mu, std = mid.statistics(state['intermediates'])
        return logits, again, mean @ fc['kernel'] + fc['bias'], sampled, mu, std

    logits, again, from_mean, sampled, mu, std = outputs(variables, x)
    np.testing.assert_array_equal(logits, again)  # Deterministic, no rng needed.
    np.testing.assert_allclose(from_mean, logits, rtol=1e-5, atol=1e-6)
    assert mu.shape == std.shape == (2, 4) and bool(np.all(np.asarray(std) > 0))
    assert not np.allclose(sampled, logits)
    with pytest.raises(Exception, match='dropout'):
        jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=['batch_stats']), variables)


def test_groups_and_freezing():
    model = mid.wrap(models.get_model('vgg16_tiny', 4))
    names = [n for n, _ in model.layer_groups]
    assert names[-2:] == ['vib', 'head'] and names[0] == 'conv1_1'
    assert model.cut_points['head'] == 'vib' and model.cut_points['stage4'] == 'conv4_1'
    # The inner model's old names still resolve through the wrapper.
    assert models.cut_point_group(model, 'block4') == 'conv4_1'
    assert models.cut_points(model)['head'] == 'vib'
    assert model.OFFICIAL_FREEZE_LAYERS == 26
    variables = _init(model)
    spec = ml_collections.ConfigDict(dict(name='tldmi+mid', fine_tune_from='head'))
    plan = transfer.resolve(model, variables['params'], variables['batch_stats'], spec)
    labels = traverse_util.flatten_dict(plan.labels, sep='/')
    assert labels['vib/kernel'] == labels['fc/kernel'] == transfer.TRAINABLE
    assert labels['conv5_3/conv/kernel'] == transfer.FROZEN
    spec = ml_collections.ConfigDict(dict(name='tldmi+mid'))  # VGG16's official k = 26.
    official = transfer.resolve(model, variables['params'], variables['batch_stats'], spec)
    flat = traverse_util.flatten_dict(official.labels, sep='/')
    assert flat['vib/bias'] == flat['conv4_2/conv/kernel'] == transfer.TRAINABLE
    assert flat['conv4_1/conv/kernel'] == transfer.FROZEN


def test_wrap_for_checkpoint_reads_k():
    inner = models.get_model('small_tiny', 3)
    params = _init(mid.wrap(inner, k=5), 16)['params']
    rebuilt = mid.wrap_for_checkpoint(inner, params)
    assert isinstance(rebuilt, mid.VIB) and rebuilt.k == 5
    assert mid.wrap_for_checkpoint(inner, _init(inner, 16)['params']) is inner


class _NoFc(nn.Module):
    num_classes: int = 2
    layer_groups = (('head', 'out/.*'),)

    @nn.compact
    def __call__(self, x, train=False):
        f = x.reshape(x.shape[0], -1)
        return f, nn.Dense(self.num_classes, name='out')(f)


def test_errors():
    with pytest.raises(ValueError, match='has no `fc` layer'):
        mid.wrap(_NoFc()).init(jax.random.key(0), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match='mid_k must be >= 0'):
        mid.wrap(_NoFc(), k=-1)
