"""KNN distance: how close each reconstruction comes to its identity's private images.

For every reconstruction, the minimum squared L2 distance in the evaluation model's feature
space (512-d for the FaceNet) to any *private training* image of the same identity; the
reported `attack/knn_dist` is the mean over all reconstructions, successful or not, as in
the original `metrics/KNN_dist.py`. Lower means closer to the private data.

Plug & Play Attacks' feature distances (`metrics/distance_metrics.py`,
`DistanceEvaluation.compute_dist`) are the same quantity: per target class, `torch.cdist`
(L2) between the reconstructions and that class's training images, squared (line 104),
the minimum over the training images (line 105), then the mean over the concatenated
minima of all reconstructions (lines 114-115). PPA reports it twice: `attack/delta_eval` in
the penultimate features of its Inception-v3 evaluation model (the model with `fc`
removed: the 2048-d pooled features) and `attack/delta_face` in the 512-d embedding of
FaceNet (InceptionResnetV1, VGGFace2), faces only. `DISTANCES` names the metrics of each
protocol (`config.distance`).

All pairs are computed with matrix products, `|q|^2 + |r|^2 - 2 q r^T` in float64, over
chunks of queries (memory: chunk x references); pairs of different identities are masked
to +inf before the minimum. There is no Python loop over pairs or identities.
"""

from collections.abc import Callable, Iterator

import numpy as np

from tldmi_jax import classifiers

# `config.distance` -> the metric each feature space reports the mean minimum squared distance
# under: 'eval' (the evaluation model's features) and, for PPA, 'face' (FaceNet's embedding).
DISTANCES: dict[str, dict[str, str]] = {
    'knn_squared_min': {'eval': 'attack/knn_dist'},  # TL-DMI's 64 px protocol.
    'ppa': {'eval': 'attack/delta_eval', 'face': 'attack/delta_face'},  # PPA, 224 px.
}


def distance_metrics(distance: str) -> dict[str, str]:
    """`DISTANCES[distance]`.

    Raises:
      ValueError: for an unknown protocol, naming the config field and the valid values.
    """
    if distance not in DISTANCES:
        raise ValueError(f'config.distance={distance!r}: use one of {sorted(DISTANCES)}.')
    return DISTANCES[distance]


def knn_distances(
    query: np.ndarray,
    query_ids: np.ndarray,
    ref: np.ndarray,
    ref_ids: np.ndarray,
    *,
    chunk_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest same-identity reference of every query, by squared L2 distance.

    Args:
      query: float [N, D], e.g. features of the reconstructions.
      query_ids: int [N], their identities.
      ref: float [M, D], e.g. features of the private training images.
      ref_ids: int [M], their identities.
      chunk_size: queries per matrix product.

    Returns:
      `(dist, nearest)`: float64 [N] minimum squared distances and int64 [N] indices into
      `ref` of the nearest same-identity reference.

    Raises:
      ValueError: if shapes disagree or some query identity has no reference.
    """
    query = np.asarray(query, np.float64)
    ref = np.asarray(ref, np.float64)
    query_ids = np.asarray(query_ids, np.int64)
    ref_ids = np.asarray(ref_ids, np.int64)
    if query.ndim != 2 or ref.ndim != 2 or query.shape[1] != ref.shape[1]:
        raise ValueError(f'Need [N, D] and [M, D] features, got {query.shape} and {ref.shape}.')
    if query_ids.shape != (len(query),) or ref_ids.shape != (len(ref),):
        raise ValueError('Need one identity per feature row.')
    missing = np.setdiff1d(query_ids, ref_ids)
    if missing.size:
        raise ValueError(f'No private training images for identities {missing.tolist()}.')
    ref_sq = np.sum(ref * ref, axis=1)
    dist = np.empty(len(query), np.float64)
    nearest = np.empty(len(query), np.int64)
    for start in range(0, len(query), chunk_size):
        q = query[start : start + chunk_size]
        ids = query_ids[start : start + chunk_size]
        d = np.sum(q * q, axis=1)[:, None] + ref_sq[None, :] - 2.0 * (q @ ref.T)
        d = np.where(ids[:, None] == ref_ids[None, :], np.maximum(d, 0.0), np.inf)
        idx = np.argmin(d, axis=1)
        nearest[start : start + len(q)] = idx
        dist[start : start + len(q)] = d[np.arange(len(q)), idx]
    return dist, nearest


def knn_dist(
    query: np.ndarray, query_ids: np.ndarray, ref: np.ndarray, ref_ids: np.ndarray, **kwargs
) -> float:
    """Mean over queries of the minimum squared L2 distance to same-identity references."""
    return float(np.mean(knn_distances(query, query_ids, ref, ref_ids, **kwargs)[0]))


class Evaluator:
    """big_vision-style: `Evaluator(predict_fn, ref=..., ref_ids=...).run(recon)`.

    `predict_fn(images) -> (features, logits)` is the evaluation model; `ref`, `ref_ids`
    are its features of the private training images and their identities.
    """

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], tuple[np.ndarray, ...]],
        *,
        ref: np.ndarray,
        ref_ids: np.ndarray,
        batch_size: int = 64,
    ):
        self.predict_fn = predict_fn
        self.ref = ref
        self.ref_ids = ref_ids
        self.batch_size = batch_size

    def run(self, recon: dict[str, np.ndarray]) -> Iterator[tuple[str, float]]:
        feats, _ = classifiers.run_batched(self.predict_fn, recon['images'], self.batch_size)
        yield 'attack/knn_dist', knn_dist(feats, recon['identity'], self.ref, self.ref_ids)
