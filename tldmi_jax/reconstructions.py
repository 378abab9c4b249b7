"""The attack output format: what attacks write and evaluation, Fisher analysis and reports read.

An attack workdir holds `reconstructions.npz` with

* `images`: float32 [N, H, W, C] in [0, 1];
* `identity`: int32 [N], the target class each image was optimised for;
* `seed`: int32 [N], the seed (or sample) index within that identity, 0..S-1;
* `batch`: int32 [N], the identity batch it was optimised in (the original protocol
  reports accuracy per (batch, seed) group);

and `attack.json` with at least `attack`, `target` (`arch`, `checkpoint`, `num_classes`),
`image_size` and `protocol_hash`.
"""

import json
import os
from typing import Any

import numpy as np

from tldmi_jax.utils import atomic, npz

FILENAME = 'reconstructions.npz'
META = 'attack.json'


def save(
    workdir: str,
    images: np.ndarray,
    identity: np.ndarray,
    seed: np.ndarray,
    batch: np.ndarray,
    meta: dict[str, Any] | None = None,
) -> str:
    """Writes `reconstructions.npz` (and `attack.json` if `meta`) atomically; returns its path."""
    images = np.asarray(images, np.float32)
    n = len(images)
    arrays = {
        k: np.asarray(v, np.int32)
        for k, v in (('identity', identity), ('seed', seed), ('batch', batch))
    }
    for k, v in arrays.items():
        if v.shape != (n,):
            raise ValueError(f'{k} has shape {v.shape}; expected ({n},) to match images.')
    if images.ndim != 4:
        raise ValueError(f'images must be [N, H, W, C], got shape {images.shape}.')
    path = os.path.join(workdir, FILENAME)
    if meta is not None:  # First: the reconstructions file marks a finished attack.
        atomic.write_json(os.path.join(workdir, META), meta, sort_keys=True)
    atomic.savez(path, images=images, **arrays)
    return path


def load(workdir: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads `(arrays, meta)` from an attack workdir; meta is {} if attack.json is absent.

    The npz is read without pickle: a file holding object arrays is refused (ValueError)
    and nothing in it runs.

    Raises:
      FileNotFoundError: naming the missing reconstructions file.
      ValueError: if a required array is missing or the shapes disagree.
    """
    path = os.path.join(workdir, FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f'No attack output: {path} does not exist.')
    arrays = npz.load(path, 'reconstructions', fix='rerun the attack that wrote them')
    missing = [k for k in ('images', 'identity', 'seed', 'batch') if k not in arrays]
    if missing:
        raise ValueError(f'{path} lacks arrays {missing}.')
    n = len(arrays['images'])
    bad = [k for k in ('identity', 'seed', 'batch') if arrays[k].shape != (n,)]
    if bad:
        raise ValueError(f'{path}: arrays {bad} do not have one entry per image ({n}).')
    meta_path = os.path.join(workdir, META)
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    return arrays, meta


def check_target(attack_dir: str, meta: dict[str, Any], path: str, fingerprint: str) -> None:
    """Refuses a target other than the one `attack.json` says the attack inverted.

    Args:
      attack_dir: the attack workdir (for the message).
      meta: its `attack.json` (`load`'s second value); without a recorded fingerprint
        (an older or hand-made attack directory) nothing is checked.
      path: the target given to the consumer.
      fingerprint: `classifiers.fingerprint` of that target's variables.

    Raises:
      ValueError: naming both fingerprints and the fix.
    """
    recorded = meta.get('target', {}) or {}
    expected = recorded.get('fingerprint')
    if expected and expected != fingerprint:
        raise ValueError(
            f'{attack_dir} was made against another target (fingerprint {expected}, '
            f'{recorded.get("checkpoint")}), not {path} (fingerprint {fingerprint}); give the '
            'target the attack inverted (--config.target.checkpoint) or rerun the attack'
        )
