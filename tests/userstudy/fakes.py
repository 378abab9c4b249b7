"""Small prepared studies for the user-study tests: hand-made attack workdirs, generated data."""

import os

import ml_collections
import numpy as np

from configs import userstudy
from tldmi_jax import reconstructions
from tldmi_jax.userstudy import manifest

NUM_CLASSES, SIZE = 4, 16


def attack_dir(path: str, *, identities=(0, 1, 2, 3), seeds: int = 2, shade: float = 0.0):
    """An attack workdir with `seeds` distinct flat-coloured reconstructions per identity."""
    ids = np.repeat(np.asarray(identities, np.int32), seeds)
    seed = np.tile(np.arange(seeds, dtype=np.int32), len(identities))
    values = (ids * seeds + seed) / (len(ids) + 1.0) * 0.8 + shade
    images = np.broadcast_to(values[:, None, None, None], (len(ids), SIZE, SIZE, 3))
    os.makedirs(path, exist_ok=True)
    reconstructions.save(
        path,
        images.astype(np.float32),
        ids,
        seed,
        np.zeros_like(ids),
        meta={'attack': 'gmi', 'image_size': SIZE},
    )
    return path


def config(arms: dict[str, str], **study) -> ml_collections.ConfigDict:
    """A user-study config over `arms` on the generated private data."""
    c = userstudy.get_config(f'arms={"+".join(arms)}')
    for name, path in arms.items():
        c.arms[name] = path
    c.data.name = 'synthetic'
    c.data.kwargs = ml_collections.ConfigDict(dict(num_classes=NUM_CLASSES, image_size=SIZE))
    c.study.references_per_trial = 2
    c.study.attention_rate = 0.5
    for key, value in study.items():
        c.study[key] = value
    return c


def prepared(tmp: str, arms=('none', 'tldmi'), **study) -> tuple[str, dict]:
    """`(workdir, manifest)` of a study prepared over hand-made arms under `tmp`."""
    dirs = {
        name: attack_dir(os.path.join(tmp, f'attack_{name}'), shade=0.1 * i)
        for i, name in enumerate(arms)
    }
    workdir = os.path.join(tmp, 'study')
    return workdir, manifest.prepare(config(dirs, **study), workdir)
