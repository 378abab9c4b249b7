"""DP-SGD: per-example clipping bounds each example, the step equals the hand computation,
noise has the stated scale, and epsilon is dp_accounting's."""

import dp_accounting
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from flax import traverse_util

from tldmi_jax import config_lib, defenses
from tldmi_jax.defenses import dpsgd, transfer
from tldmi_jax.models.layers import BatchNorm
from tldmi_jax.train import classifier


def test_clipping_bounds_each_example():
    per_example = {
        'a': jnp.array([[3.0, 4.0], [0.3, 0.4], [300.0, 400.0]]),  # Norms 5, 0.5, 500.
        'b': jnp.zeros((3, 1)),
    }

    @jax.jit  # One program for every comparison below (test time).
    def outputs(per_example, key):
        factors, norms = dpsgd.clip_factors(per_example, 1.0)
        privatized = dpsgd.privatize(per_example, clip_norm=1.0, noise_multiplier=0.0, key=key)
        return factors * norms, norms, privatized

    contributions, norms, (grads, metrics) = outputs(per_example, jax.random.key(0))
    np.testing.assert_allclose(norms, [5.0, 0.5, 500.0], rtol=1e-6)
    assert np.all(np.asarray(contributions) <= 1.0 + 1e-6)  # Each contribution <= C.
    # Clipped: (0.6, 0.8), (0.3, 0.4) (under C, unchanged), (0.6, 0.8); their mean.
    np.testing.assert_allclose(grads['a'], [0.5, 2.0 / 3.0], rtol=1e-6)
    np.testing.assert_allclose(grads['b'], [0.0])
    np.testing.assert_allclose(metrics['train/dp_clipped'], 2.0 / 3.0, rtol=1e-6)


def test_noise_scale():
    per_example = {'w': jnp.zeros((4, 40_000))}
    privatize = jax.jit(  # One program (test time).
        lambda g, key: dpsgd.privatize(g, clip_norm=0.5, noise_multiplier=2.0, key=key)
    )
    grads, _ = privatize(per_example, jax.random.key(3))
    # N(0, (sigma C)^2) on the sum, divided by B = 4: std 0.25.
    np.testing.assert_allclose(np.std(grads['w']), 0.25, rtol=0.03)
    assert abs(float(np.mean(grads['w']))) < 0.01


class _Toy(nn.Module):
    """Dense -> BatchNorm -> tanh -> fc, with the classifier interface."""

    num_classes: int = 3

    @property
    def layer_groups(self):
        return (('hidden', 'hidden/.*'), ('bn', 'bn/.*'), ('head', 'fc/.*'))

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(5, name='hidden')(x.reshape(x.shape[0], -1))
        features = jnp.tanh(BatchNorm(name='bn')(h, train))
        return features, nn.Dense(self.num_classes, name='fc')(features)


def _spec(**kw):
    """The defense block of a classifier config (every hyperparameter), overridden."""
    config = config_lib.classifier_config(
        dataset='synthetic',
        arch='small',
        num_classes=3,
        image_size=2,
        channels=3,
        lr=1.0,
        epochs=1,
        batch_size=4,
        defense='tldmi+dpsgd',
    )
    spec = config.defense
    spec.update(rules='hidden/.*:frozen;.*:trainable', dp_clip_norm=0.1, dp_noise_multiplier=0.0)
    spec.update(kw)
    return spec


def test_step_equals_mean_of_clipped_per_example_grads():
    model = _Toy()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
    images[2] *= 1000.0  # One example with a huge gradient.
    labels = np.array([0, 1, 2, 1], np.int32)

    @jax.jit  # One program for the initial state (test time).
    def init(key, x):
        variables = model.init(key, x)
        # Non-trivial running statistics, to see that DP steps use and keep them.
        return variables['params'], jax.tree.map(lambda v: v + 0.3, variables['batch_stats'])

    params, stats = init(jax.random.key(0), jnp.asarray(images[:1]))
    spec = _spec()
    plan = transfer.resolve(model, params, stats, spec)
    objective = defenses.build(
        spec,
        model,
        params,
        plan,
        num_classes=3,
        train_size=40,
        batch_size=4,
        steps_per_epoch=10,
        total_steps=10,
    )
    tx = transfer.make_optimizer(optax.sgd(1.0), plan.labels)
    state = classifier.TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        best_val=jnp.asarray(-1.0),
        best_step=jnp.asarray(-1),
    )
    step = jax.jit(
        classifier.make_train_step(model, tx, plan, seed=0, flip=False, objective=objective)
    )
    new, metrics = step(state, {'image': jnp.asarray(images), 'label': jnp.asarray(labels)})

    def loss(p, x, y):  # One example, BatchNorm on its running statistics.
        _, logits = model.apply({'params': p, 'batch_stats': stats}, x[None], train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[None])[0]

    grad = jax.jit(jax.grad(loss))  # One program for the four examples (test time).
    clipped, contributions = [], []
    for x, y in zip(images, labels, strict=True):
        g = traverse_util.flatten_dict(grad(params, jnp.asarray(x), jnp.asarray(y)))
        g = {k: np.asarray(v, np.float64) for k, v in g.items() if k[0] != 'hidden'}
        norm = np.sqrt(sum(np.sum(v**2) for v in g.values()))
        scale = 0.1 / max(0.1, norm)
        clipped.append({k: v * scale for k, v in g.items()})
        contributions.append(norm * scale)
    assert max(contributions) <= 0.1 + 1e-6
    before = traverse_util.flatten_dict(params)
    after = traverse_util.flatten_dict(new.params)
    for k in before:
        if k[0] == 'hidden':  # Frozen: no gradient, no noise.
            np.testing.assert_array_equal(after[k], before[k])
        else:
            mean = sum(c[k] for c in clipped) / 4
            np.testing.assert_allclose(after[k], before[k] - mean, rtol=1e-4, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, new.batch_stats, stats)
    assert float(metrics['train/dp_clipped']) > 0


class EpsilonTest(parameterized.TestCase):
    @parameterized.product(accountant=['rdp', 'pld'], steps=[1, 250])
    def test_matches_dp_accounting(self, accountant, steps):
        q, sigma, delta = 64 / 27_000, 1.1, 1e-5
        event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        acc = (
            dp_accounting.rdp.RdpAccountant()
            if accountant == 'rdp'
            else dp_accounting.pld.PLDAccountant()
        )
        acc.compose(event)
        got = dpsgd.epsilon(
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            delta=delta,
            accountant=accountant,
        )
        assert got == acc.get_epsilon(delta)

    def test_edge_cases(self):
        kw = dict(sample_rate=0.1, delta=1e-5)
        assert dpsgd.epsilon(noise_multiplier=1.0, steps=0, **kw) == 0.0
        assert dpsgd.epsilon(noise_multiplier=0.0, steps=5, **kw) == float('inf')


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match='dp_clip_norm must be > 0'):
        dpsgd.check(0.0, 1.0, 1e-5, 'rdp')
    with pytest.raises(ValueError, match='dp_noise_multiplier must be >= 0'):
        dpsgd.check(1.0, -1.0, 1e-5, 'rdp')
    with pytest.raises(ValueError, match='dp_delta must be in'):
        dpsgd.check(1.0, 1.0, 1.0, 'rdp')
    with pytest.raises(ValueError, match='dp_accountant must be one of'):
        dpsgd.check(1.0, 1.0, 1e-5, 'moments')
