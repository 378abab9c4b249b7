"""BiDO: HSIC/COCO by hand, dependent vs independent samples, hidden-layer capture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from tldmi_jax import models
from tldmi_jax.defenses import bido, mid

X4 = jnp.array([[0.0], [1.0], [2.0], [3.0]])  # Centred: -1.5, -0.5, 0.5, 1.5 (sum of squares 5).


def test_linear_kernel_values_by_hand():
    @jax.jit  # One program for every comparison below (test time).
    def outputs(x):
        k = bido.kernel_matrix(x, 'linear')
        return [f(k, k) for f in (bido.hsic_biased, bido.coco, bido.hsic_normalized)]

    biased, coco, normalized = outputs(X4)
    # Biased HSIC(x, x) = (x_c^T x_c)^2 / (m - 1)^2 = 25 / 9.
    np.testing.assert_allclose(biased, 25 / 9, rtol=1e-6)
    # COCO: (H K H)^2 = 5 x_c x_c^T, Frobenius norm 25; sqrt(25) / m = 1.25.
    np.testing.assert_allclose(coco, 1.25, rtol=1e-6)
    # Normalised: K H = x x_c^T has one eigenvalue mu = 5, R = K H / (mu + eps m), so
    # tr(R R) = (5 / (5 + 4e-5))^2.
    np.testing.assert_allclose(normalized, (5 / (5 + 4e-5)) ** 2, rtol=1e-4)


def _reference_normalized_hsic(x, y, sigma, eps=1e-5):
    """The original's formula in float64 with explicit loops (Gaussian kernels)."""

    def gram(a):
        m, d = a.shape
        g = np.empty((m, m))
        for i in range(m):
            for j in range(m):
                g[i, j] = np.exp(-np.sum((a[i] - a[j]) ** 2) / (2 * sigma**2 * d))
        return g

    m = x.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    rx = gram(x) @ h @ np.linalg.inv(gram(x) @ h + eps * m * np.eye(m))
    ry = gram(y) @ h @ np.linalg.inv(gram(y) @ h + eps * m * np.eye(m))
    return np.sum(rx * ry.T)


def test_gaussian_normalized_hsic_on_three_points():
    x = np.array([[0.0, 1.0], [2.0, -1.0], [3.0, 3.0]])
    y = np.array([[1.0], [0.0], [4.0]])
    sigma = 1.0

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x, y):
        kx = bido.kernel_matrix(x, 'gaussian', sigma)
        ky = bido.kernel_matrix(y, 'gaussian', sigma)
        same = bido.kernel_matrix(x, 'gaussian', sigma)
        return bido.hsic_normalized(kx, ky), bido.hsic_normalized(same, same)

    got, got_same = outputs(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(got, _reference_normalized_hsic(x, y, sigma), rtol=1e-4)
    # Identical inputs: about the rank of the centred Gram matrix (m - 1 = 2).
    np.testing.assert_allclose(got_same, 2.0, rtol=1e-3)


class DependenceTest(parameterized.TestCase):
    @parameterized.parameters(*bido.MEASURES)
    def test_dependent_inputs_score_higher(self, measure):
        rng = np.random.default_rng(0)
        z = rng.normal(size=(32, 2)).astype(np.float32)
        dependent = z + 0.1 * rng.normal(size=z.shape).astype(np.float32)
        independent = rng.normal(size=z.shape).astype(np.float32)
        fn = bido._MEASURE_FNS[measure]
        kz = bido.kernel_matrix(jnp.asarray(z))
        dep = fn(kz, bido.kernel_matrix(jnp.asarray(dependent)))
        ind = fn(kz, bido.kernel_matrix(jnp.asarray(independent)))
        assert dep > 1.5 * ind, (dep, ind)

    @parameterized.parameters(*bido.MEASURES)
    def test_label_dependence(self, measure):
        rng = np.random.default_rng(1)
        labels = rng.integers(0, 4, size=64)
        onehot = np.eye(4, dtype=np.float32)[labels]
        centres = 3.0 * rng.normal(size=(4, 8)).astype(np.float32)
        informative = centres[labels] + 0.3 * rng.normal(size=(64, 8)).astype(np.float32)
        noise = rng.normal(size=(64, 8)).astype(np.float32)
        images = rng.uniform(size=(64, 4, 4, 3)).astype(np.float32)
        _, hy_good = bido.dependencies(informative, images, onehot, measure=measure)
        _, hy_bad = bido.dependencies(noise, images, onehot, measure=measure)
        assert hy_good > 1.5 * hy_bad, (hy_good, hy_bad)


class LayersTest(parameterized.TestCase):
    @parameterized.parameters(
        ('vgg16_tiny', 32, ('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3')),  # BiDO's blocks 1-4.
        ('ir152_tiny', 16, ('body_0', 'body_1', 'body_2')),  # Stages 1-3.
        ('small_tiny', 16, ('block0',)),
        ('resnet18', 32, ('layer1_1', 'layer2_1', 'layer3_1')),  # Last of two blocks.
        # Stages 1-6 of 7, from the stage1..7 cut points (before them: stages 1-7).
        ('efficientnet_b0_tiny', 32, tuple(f'features_{s}_0' for s in range(1, 7))),
    )
    def test_default_layers(self, arch, size, expected):
        model = models.get_model(arch, 3)
        params = jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
        )['params']
        assert bido.resolve_layers(model, params) == expected
        wrapped = mid.wrap(model)
        wrapped_params = jax.eval_shape(
            lambda: wrapped.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
        )['params']
        assert bido.resolve_layers(wrapped, wrapped_params) == expected

    def test_explicit_and_unknown_layers(self):
        model = models.get_model('vgg16_tiny', 3)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))[
            'params'
        ]
        assert bido.resolve_layers(model, params, 'conv5_3, conv2_1') == ('conv5_3', 'conv2_1')
        with pytest.raises(ValueError, match=r"unknown modules \['block9'\]"):
            bido.resolve_layers(model, params, 'block9')


def test_capture_and_pool():
    model = models.get_model('vgg16_tiny', 3)
    layers = ('conv1_2', 'conv3_3')

    @jax.jit  # One program for every check below (test time).
    def outputs(key):
        x = jax.random.uniform(key, (2, 32, 32, 3))
        variables = model.init(jax.random.key(1), x)
        (features, _), state = model.apply(
            variables,
            x,
            capture_intermediates=bido.capture_filter(layers),
            mutable=['intermediates'],
        )
        hiddens = bido.hidden_representations(
            state['intermediates'], layers, features, bido.pools_blocks(model)
        )
        return features, state, hiddens

    features, state, hiddens = outputs(jax.random.key(0))
    assert set(state['intermediates']) == set(layers)
    # Block outputs after the 2x2 max-pool, as the original's, then the features.
    assert [h.shape for h in hiddens] == [(2, 16, 16, 8), (2, 4, 4, 32), features.shape]
    assert not bido.pools_blocks(models.get_model('ir152_tiny', 3))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match='bido_measure must be one of'):
        bido.check('mi', 'linear', 5.0, 0.05, 0.5)
    with pytest.raises(ValueError, match='bido_label_kernel'):
        bido.check('hsic', 'imq', 5.0, 0.05, 0.5)
    with pytest.raises(ValueError, match='bido_sigma must be > 0'):
        bido.check('hsic', 'linear', 0.0, 0.05, 0.5)
    with pytest.raises(ValueError, match='must be >= 0'):
        bido.check('coco', 'linear', 5.0, -1.0, 0.5)
    with pytest.raises(ValueError, match='Unknown kernel'):
        bido.kernel_matrix(X4, 'imq')
