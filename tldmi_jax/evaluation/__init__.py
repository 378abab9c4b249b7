"""Evaluation of model-inversion attacks: attack accuracy, KNN distance, FID/KID/PRDC.

`evaluate.evaluate(config, workdir)` runs the whole protocol (`launch/evaluate.py`); the
metric functions are plain numpy and usable alone:

    from tldmi_jax.evaluation import attack_accuracy, knn_distances, fid_score, kid, prdc
"""

from tldmi_jax.evaluation.attack_acc import attack_accuracy, per_identity, topk_correct
from tldmi_jax.evaluation.fid import fid_score, frechet_distance, kid, prdc
from tldmi_jax.evaluation.knn import knn_dist, knn_distances

__all__ = [
    'attack_accuracy',
    'fid_score',
    'frechet_distance',
    'kid',
    'knn_dist',
    'knn_distances',
    'per_identity',
    'prdc',
    'topk_correct',
]
