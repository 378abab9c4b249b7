"""KNN distance against hand-computed values and a brute-force loop."""

import numpy as np
import pytest

from tldmi_jax.evaluation import knn


def test_hand_computed():
    query = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    query_ids = np.array([0, 1, 0])
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [2.0, 2.0], [3.0, 1.0]])
    ref_ids = np.array([0, 0, 1, 0])
    dist, nearest = knn.knn_distances(query, query_ids, ref, ref_ids)
    # q0 -> (1, 0): 1; q1 -> (2, 2), the only id-1 image: 2; q2 -> (3, 1): 1.
    np.testing.assert_allclose(dist, [1.0, 2.0, 1.0])
    assert nearest.tolist() == [0, 2, 3]
    assert knn.knn_dist(query, query_ids, ref, ref_ids) == pytest.approx(4 / 3)


def test_chunked_matches_brute_force():
    rng = np.random.default_rng(0)
    query, ref = rng.normal(size=(23, 5)), rng.normal(size=(40, 5))
    query_ids, ref_ids = rng.integers(0, 4, 23), np.arange(40) % 4
    dist, nearest = knn.knn_distances(query, query_ids, ref, ref_ids, chunk_size=4)
    for i in range(len(query)):
        same = np.flatnonzero(ref_ids == query_ids[i])
        d = ((ref[same] - query[i]) ** 2).sum(1)
        assert dist[i] == pytest.approx(d.min())
        assert nearest[i] == same[np.argmin(d)]
    full, _ = knn.knn_distances(query, query_ids, ref, ref_ids, chunk_size=1000)
    np.testing.assert_allclose(full, dist)


def test_errors_and_evaluator():
    with pytest.raises(ValueError, match=r'identities \[5\]'):
        knn.knn_distances(np.zeros((1, 2)), [5], np.zeros((1, 2)), [0])
    ref = np.array([[0.0, 0.0], [2.0, 0.0]])
    evaluator = knn.Evaluator(
        lambda x: (np.asarray(x).reshape(len(x), -1), np.zeros(len(x))),
        ref=ref,
        ref_ids=[0, 1],
        batch_size=2,
    )
    images = np.array([[[[1.0, 0.0]]], [[[1.0, 1.0]]], [[[2.0, 0.0]]]])  # [3, 1, 1, 2]
    out = dict(evaluator.run({'images': images, 'identity': np.array([0, 1, 1])}))
    assert out['attack/knn_dist'] == pytest.approx((1.0 + 2.0 + 0.0) / 3)


def test_ppa_delta_hand_computed():
    """PPA's delta (distance_metrics.py compute_dist): per reconstruction the minimum over its
    class's training images of the *squared* L2 distance, then the mean over reconstructions
    (not over identities); other classes' images never count."""
    assert knn.distance_metrics('ppa') == {
        'eval': 'attack/delta_eval',
        'face': 'attack/delta_face',
    }
    assert knn.distance_metrics('knn_squared_min') == {'eval': 'attack/knn_dist'}
    query = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    query_ids = np.array([0, 0, 1])
    ref = np.array([[0.0, 1.0], [6.0, 8.0], [1.0, 1.0], [4.0, 5.0], [0.0, 0.0]])
    ref_ids = np.array([0, 0, 1, 1, 2])  # (0, 0) of class 2 would be q0's nearest.
    dist, nearest = knn.knn_distances(query, query_ids, ref, ref_ids)
    # q0: min(1, 100) = 1; q1: min(9 + 9, 9 + 16) = 18; q2: min(0, 9 + 16) = 0.
    np.testing.assert_allclose(dist, [1.0, 18.0, 0.0])
    assert nearest.tolist() == [0, 0, 2]
    # Mean over the 3 reconstructions: 19 / 3, not the identity mean ((1 + 18) / 2 + 0) / 2
    # and not the unsquared (1 + sqrt(18) + 0) / 3.
    assert knn.knn_dist(query, query_ids, ref, ref_ids) == pytest.approx(19.0 / 3.0)
    with pytest.raises(ValueError, match=r"config.distance='l2'"):
        knn.distance_metrics('l2')
