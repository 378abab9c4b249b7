"""Evaluation of model-inversion attacks: attack accuracy, KNN distance, FID/KID/PRDC.

Two protocols: TL-DMI's 64 px one (`attack/knn_dist`) and Plug & Play Attacks' 224 px one
(the same distance as `attack/delta_eval`, plus FaceNet's `attack/delta_face`, `face.py`).

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
