"""FID, KID and PRDC: closed forms, sanity on shifted sets, brute-force references."""

import math

import numpy as np
import pytest

from tldmi_jax.evaluation import fid


def _features(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d))


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 8.0 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    x = _features()
    assert abs(fid.fid_score(x, x)) < 1e-6
    shifts = [fid.fid_score(x, x + c) for c in (0.5, 1.0, 2.0)]
    # Same covariance: FID = |shift|^2 = D c^2 exactly.
    np.testing.assert_allclose(shifts, [6 * 0.25, 6 * 1.0, 6 * 4.0], rtol=1e-6)
    assert fid.fid_score(x, _features(seed=1)) > 0.0
    assert math.isnan(fid.fid_score(x, x[:1]))


def test_mmd_matches_brute_force_and_kid_sanity():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.3

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    xx = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(a[i], b[j]) for i in range(5) for j in range(4)) / 20
    assert fid.mmd2_unbiased(a, b) == pytest.approx(xx + yy - 2 * xy)

    x, y = _features(seed=2), _features(seed=3)  # Same distribution, different draws.
    same = fid.kid(x, y, num_subsets=20, max_subset_size=100)
    near, far = (fid.kid(x, y + c, num_subsets=20, max_subset_size=100) for c in (1.0, 3.0))
    assert abs(same) < near < far
    assert fid.kid(x, y, num_subsets=5, seed=1) == fid.kid(x, y, num_subsets=5, seed=1)
    assert math.isnan(fid.kid(x, y[:1]))


def _prdc_reference(real, fake, k):
    """A loop-by-loop transcription of the PRDC definitions."""

    def radius(points, i):
        d = sorted(np.linalg.norm(points - points[i], axis=1))
        return d[k]  # d[0] is the point itself.

    rr = [radius(real, i) for i in range(len(real))]
    fr = [radius(fake, j) for j in range(len(fake))]
    dist = np.array([[np.linalg.norm(r - f) for f in fake] for r in real])
    n, m = dist.shape
    precision = np.mean([any(dist[i, j] < rr[i] for i in range(n)) for j in range(m)])
    recall = np.mean([any(dist[i, j] < fr[j] for j in range(m)) for i in range(n)])
    density = np.mean([sum(dist[i, j] < rr[i] for i in range(n)) for j in range(m)]) / k
    coverage = np.mean([dist[i].min() < rr[i] for i in range(n)])
    return dict(precision=precision, recall=recall, density=density, coverage=coverage)


def test_prdc_matches_reference_and_sanity():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(12, 2)), rng.normal(size=(9, 2)) + 0.7
    got = fid.prdc(real, fake, k=3)
    for name, value in _prdc_reference(real, fake, 3).items():
        assert got[name] == pytest.approx(value), name
    np.testing.assert_allclose(fid.knn_radii(real, 3, chunk_size=5), fid.knn_radii(real, 3))
    same = fid.prdc(real, real, k=3)
    assert same['precision'] == same['recall'] == same['coverage'] == 1.0
    far = fid.prdc(real, real + 100.0, k=3)
    assert far == {'precision': 0.0, 'recall': 0.0, 'density': 0.0, 'coverage': 0.0}
    assert all(math.isnan(v) for v in fid.prdc(real, fake[:3], k=3).values())
