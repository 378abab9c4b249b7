"""Distribution metrics on Inception features: FID, KID and precision/recall/density/coverage.

* FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the two
  feature sets, `|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))`, covariances with ddof=1
  (`np.cov`), `scipy.linalg.sqrtm`; as pytorch-fid and the original TL-DMI `metrics/fid.py`.
* KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  `k(x, y) = (x.y / d + 1)^3`, averaged over `num_subsets` random subsets of
  `min(n_real, n_fake, max_subset_size)` examples per set (StyleGAN2-ADA's estimator,
  seeded here so it is deterministic).
* PRDC (Naeem et al. 2020, `clovaai/generative-evaluation-prdc`) with k nearest neighbours
  (k=3 by default) under Euclidean distance: precision, recall, density, coverage. The
  k-NN radii are computed in row chunks so memory stays O(chunk x N).

In the MI protocol the real set is the private images of the attacked identities and the
fake set is the successful reconstructions (evaluation model's top-1 correct). Metrics that
need more samples than given return NaN.
"""

import warnings

import numpy as np
from absl import logging
from scipy import linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (ddof=1) of float [N, D] features, in float64."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    If `sqrtm(sigma1 @ sigma2)` is not finite (a singular product), `eps * I` is added to
    both covariances, as pytorch-fid does.

    Raises:
      ValueError: if the square root has a significant imaginary part.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f'Mismatched statistics: {mu1.shape} vs {mu2.shape}.')
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Fewer samples than dimensions make the product singular; handled below.
        warnings.simplefilter('ignore', linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(covmean)):
            logging.warning('FID: singular covariance product; adding %g to the diagonals.', eps)
            offset = np.eye(len(sigma1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f'FID: imaginary component {np.max(np.abs(covmean.imag))}.')
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_score(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two float [N, D] feature sets (NaN if either has < 2 rows)."""
    if len(real) < 2 or len(fake) < 2:
        return float('nan')
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between float [m, D] and [n, D] under the cubic polynomial kernel."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID: mean unbiased MMD^2 over random equal-size subsets (NaN if a set has < 2 rows).

    Args:
      real: float [N, D].
      fake: float [M, D].
      num_subsets: subsets averaged.
      max_subset_size: subset size cap; the size is `min(N, M, max_subset_size)`.
      seed: seeds the subset draws.

    Returns:
      The KID estimate (can be slightly negative: the estimator is unbiased).
    """
    size = min(len(real), len(fake), max_subset_size)
    if size < 2:
        return float('nan')
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            fake[rng.choice(len(fake), size, replace=False)],
            real[rng.choice(len(real), size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values))


def _pairwise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(x), len(y)]."""
    d2 = np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :] - 2.0 * (x @ y.T)
    return np.sqrt(np.maximum(d2, 0.0))


def knn_radii(features: np.ndarray, k: int, chunk_size: int = 1024) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (self excluded), float64 [N]."""
    features = np.asarray(features, np.float64)
    radii = np.empty(len(features))
    for start in range(0, len(features), chunk_size):
        d = _pairwise(features[start : start + chunk_size], features)
        # Index k of the sorted row: index 0 is the point itself (distance 0).
        radii[start : start + len(d)] = np.partition(d, k, axis=1)[:, k]
    return radii


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Precision, recall, density and coverage with k nearest neighbours.

    Args:
      real: float [N, D], N > k.
      fake: float [M, D], M > k.
      k: neighbourhood size.

    Returns:
      `{'precision', 'recall', 'density', 'coverage'}`; all NaN if N or M <= k.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) <= k or len(fake) <= k:
        return dict.fromkeys(('precision', 'recall', 'density', 'coverage'), float('nan'))
    real_r = knn_radii(real, k)
    fake_r = knn_radii(fake, k)
    d = _pairwise(real, fake)  # [N, M]
    inside_real = d < real_r[:, None]
    return {
        'precision': float(inside_real.any(axis=0).mean()),
        'recall': float((d < fake_r[None, :]).any(axis=1).mean()),
        'density': float(inside_real.sum(axis=0).mean() / k),
        'coverage': float((d.min(axis=1) < real_r).mean()),
    }
