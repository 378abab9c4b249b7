"""The Fisher estimator against the closed form of a (2-layer) logistic-regression model.

Both methods (`fisher.METHODS`); tests/analysis/test_per_example.py compares them on every
layer configuration of the model zoo.
"""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from tldmi_jax.analysis import fisher

D, H, K, N = 4, 3, 5, 11


class _Logistic(nn.Module):
    """x -> [hidden (linear)] -> fc -> logits; returns (features, logits)."""

    hidden: bool = False

    @property
    def layer_groups(self):
        return (('hidden', 'hidden/.*'), ('head', 'fc/.*')) if self.hidden else (('head', 'fc/.*'),)

    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(len(x), -1)
        if self.hidden:
            x = nn.Dense(H, name='hidden')(x)
        return x, nn.Dense(K, name='fc')(x)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 1, 2, 2)).astype(np.float32)  # Flattens to D = 4 inputs.
    y = rng.integers(0, K, N).astype(np.int32)
    return x, y


def _params(model):
    x, _ = _data()
    params = model.init(jax.random.key(1), x[:1])['params']
    # Larger weights than the default init, so the probabilities are far from uniform.
    return jax.tree.map(lambda p: np.asarray(p) * 3.0 + 0.1, params)


def _closed_form(params, x, y, hidden):
    """Mean over examples of squared per-example gradients, from the closed form.

    d CE / d logits = p - onehot(y); for logits = h W + b: dW = h (p - y)^T, db = p - y;
    for h = x W1 + b1: dh = W (p - y), dW1 = x dh^T, db1 = dh.
    """
    x = x.reshape(len(x), -1).astype(np.float64)
    out = {k: {n: np.zeros(np.shape(v)) for n, v in layer.items()} for k, layer in params.items()}
    w, b = (np.asarray(params['fc'][n], np.float64) for n in ('kernel', 'bias'))
    for xn, yn in zip(x, y, strict=True):
        h = xn
        if hidden:
            w1, b1 = (np.asarray(params['hidden'][n], np.float64) for n in ('kernel', 'bias'))
            h = xn @ w1 + b1
        logits = h @ w + b
        p = np.exp(logits - logits.max())
        p /= p.sum()
        g = p - np.eye(K)[yn]
        out['fc']['kernel'] += np.outer(h, g) ** 2
        out['fc']['bias'] += g**2
        if hidden:
            dh = w @ g
            out['hidden']['kernel'] += np.outer(xn, dh) ** 2
            out['hidden']['bias'] += dh**2
    return jax.tree.map(lambda v: v / len(x), out)


@pytest.mark.parametrize('per', fisher.PER)
@pytest.mark.parametrize('method', fisher.METHODS)
@pytest.mark.parametrize('hidden', [False, True])
def test_matches_closed_form(hidden, method, per):
    model = _Logistic(hidden=hidden)
    params = _params(model)
    x, y = _data()
    loss = fisher.classifier_loss(model, {})
    estimator = fisher.FisherEstimator(loss, chunk_size=4, method=method, per=per)
    got, n = estimator.run(params, [(x, y)])
    assert n == N
    expected = full = _closed_form(params, x, y, hidden)
    counts = None
    if per == 'tensor':  # Each tensor's sum, one number.
        expected = jax.tree.map(np.sum, full)
        counts = jax.tree.map(np.size, params)
    for layer in expected:
        for name in expected[layer]:
            assert np.shape(got[layer][name]) == np.shape(expected[layer][name])
            np.testing.assert_allclose(got[layer][name], expected[layer][name], rtol=1e-4)
    rows = fisher.group_means(got, model.layer_groups, counts)
    head = full['fc']
    head_mean = (head['kernel'].sum() + head['bias'].sum()) / (head['kernel'].size + K)
    assert rows[-1]['group'] == 'head' and rows[-1]['num_params'] == head['kernel'].size + K
    assert rows[-1]['value'] == pytest.approx(head_mean, rel=1e-4)


def test_chunked_equals_unchunked():
    model = _Logistic(hidden=True)
    params = _params(model)
    x, y = _data(seed=3)
    whole, _ = fisher.FisherEstimator(fisher.classifier_loss(model, {}), N).run(params, [(x, y)])
    # Chunks of 3 over uneven input batches (5 + 6), with a padded, masked last chunk.
    chunked, n = fisher.FisherEstimator(fisher.classifier_loss(model, {}), 3).run(
        params, [(x[:5], y[:5]), (x[5:], y[5:])]
    )
    assert n == N
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_same_inputs_give_identical_fisher():
    """Determinism: a second estimator on the same model and data, bit for bit (1 vs 4
    devices: tests/utils/test_sharding.py)."""
    model = _Logistic(hidden=True)
    params = _params(model)
    x, y = _data(seed=5)
    runs = [
        fisher.FisherEstimator(fisher.classifier_loss(model, {}), 4).run(params, [(x, y)])[0]
        for _ in range(2)
    ]
    for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_group_means_normalise_and_plot(tmp_path):
    tree = {'a': {'w': np.array([1.0, 3.0])}, 'b': {'w': np.array([4.0])}, 'c': {'w': np.ones(2)}}
    rows = fisher.group_means(tree, (('first', 'a/.*'), ('second', '(a|b)/.*')))
    assert [(r['group'], r['num_params'], r['value']) for r in rows] == [
        ('first', 2, 2.0),
        ('second', 1, 4.0),
        ('(ungrouped)', 2, 1.0),
    ]
    assert fisher.normalise([1.0, 4.0, 2.0]) == [0.25, 1.0, 0.5]
    assert fisher.normalise([0.0, 0.0]) == [0.0, 0.0]
    path = fisher.plot(str(tmp_path / 'f.png'), ['a', 'b'], {'x': [1.0, 0.5]}, 'title')
    assert os.path.getsize(path) > 1000
    with pytest.raises(ValueError, match='chunk_size'):
        fisher.FisherEstimator(lambda p, x, y: 0.0, 0)
    with pytest.raises(ValueError, match=r"method must be one of \('layers', 'vmap'\)"):
        fisher.FisherEstimator(lambda p, x, y: 0.0, 1, method='loop')
    with pytest.raises(ValueError, match=r"per must be one of \('parameter', 'tensor'\)"):
        fisher.FisherEstimator(lambda p, x, y: 0.0, 1, per='layer')
    # Per-tensor sums with their parameter counts give the same means.
    sums = jax.tree.map(np.sum, tree)
    counts = jax.tree.map(np.size, tree)
    assert fisher.group_means(sums, (('first', 'a/.*'), ('second', '(a|b)/.*')), counts) == rows
    json.dumps(rows)  # JSON-serialisable.
