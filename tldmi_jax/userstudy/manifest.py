"""A study, frozen: the manifest and the images it names, made once before anyone rates.

`prepare(config, workdir)` reads the arms' attack workdirs (`reconstructions.npz`) and the
private data, and writes

* `study/images/<sha256>.png`: every image a rater may see, named by the SHA-256 of its
  bytes: `references_per_trial` private images per identity (the dataset's own
  preprocessing, at the reconstructions' size unless `study.reference_size` says otherwise)
  and the reconstructions used;
* `study/manifest.json` (written last: its presence marks a finished preparation): the arms
  (attack workdir, attack name, SHA-256 of its reconstructions), the identities, the trials,
  the attention-check pool, every image with its hash and origin, and `study_hash`, the
  SHA-256 of all of that.

Trials: for each identity shared by all arms, for each seed index `s < seeds_per_identity`
(the attacks' own seed order), one `pair` trial per pair of arms showing each arm's seed-`s`
reconstruction. The attention pool has one trial per identity: the seed-0 reconstruction of
one arm (arms taken in turn) against the identity's first reference image.

`load` reads a manifest back and `verify` recomputes every image's hash and the study hash,
so a study whose files were edited is refused instead of served.
"""

import hashlib
import io
import itertools
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from tldmi_jax import data, reconstructions
from tldmi_jax.data import preprocess
from tldmi_jax.reporting import grids
from tldmi_jax.userstudy import stats
from tldmi_jax.utils import atomic

STUDY_DIR = 'study'
IMAGE_DIR = os.path.join(STUDY_DIR, 'images')
MANIFEST = os.path.join(STUDY_DIR, 'manifest.json')
VERSION = 1


class StudyError(ValueError):
    """The arms or the data cannot make a study, or a prepared study is damaged."""


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _png(image: np.ndarray) -> bytes:
    """float [H, W, C] in [0, 1] -> PNG bytes (deterministic: no timestamps)."""
    pixels = grids.to_uint8(image[None])[0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='PNG')
    return buffer.getvalue()


def arm_dirs(config: ml_collections.ConfigDict) -> dict[str, str]:
    """`{arm: attack workdir}` in the order of `config.arm_order` (then by name).

    Raises:
      StudyError: fewer than two arms, or an arm without a workdir (named, with the flag).
    """
    given = dict(config.arms.items())  # ConfigDict sorts its keys: `arm_order` has the order.
    order = [a for a in config.get('arm_order', '').split('+') if a in given]
    arms = {name: given[name] for name in [*order, *sorted(set(given) - set(order))]}
    if len(arms) < 2:
        raise StudyError(
            f'a study compares at least two arms; the config has {list(arms)}: name them '
            "in the config argument (':arms=none+tldmi') and give each --config.arms.NAME=DIR"
        )
    unset = [name for name, path in arms.items() if not path]
    if unset:
        flags = ' '.join(f'--config.arms.{n}=ATTACK_DIR' for n in unset)
        raise StudyError(f'arms without an attack workdir: {", ".join(unset)}; give {flags}')
    if stats.REFERENCE in arms:
        raise StudyError(f'{stats.REFERENCE!r} is reserved for the attention checks')
    return arms


def _load_arm(name: str, path: str) -> dict[str, Any]:
    try:
        arrays, meta = reconstructions.load(path)
    except (FileNotFoundError, ValueError) as e:
        raise StudyError(f'arm {name!r}: {e}') from e
    with open(os.path.join(path, reconstructions.FILENAME), 'rb') as f:
        digest = _sha256(f.read())
    return {'arrays': arrays, 'meta': meta, 'sha256': digest}


def _identities(loaded: Mapping[str, dict], limit: int, seed: int) -> list[int]:
    shared = set.intersection(*(set(v['arrays']['identity'].tolist()) for v in loaded.values()))
    if not shared:
        shown = '; '.join(
            f'{name}: {np.unique(v["arrays"]["identity"]).tolist()[:10]}'
            for name, v in loaded.items()
        )
        raise StudyError(f'the arms share no identity ({shown}); attack the same identities')
    ids = sorted(int(i) for i in shared)
    if 0 < limit < len(ids):
        rng = np.random.default_rng([seed, 1])
        ids = sorted(int(i) for i in rng.choice(ids, limit, replace=False))
    return ids


def _by_seed(arrays: Mapping[str, np.ndarray], identity: int) -> np.ndarray:
    """Indices of `identity`'s reconstructions, ordered by seed index."""
    found = np.flatnonzero(arrays['identity'] == identity)
    return found[np.argsort(arrays['seed'][found], kind='stable')]


def prepare(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Builds the study (images and manifest) and writes it to `workdir`; returns the manifest.

    Raises:
      See `build`.
    """
    manifest, payloads = build(config)
    write(workdir, manifest, payloads)
    return manifest


def build(config: ml_collections.ConfigDict) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The study's manifest and its images' PNG bytes (`{file name: bytes}`); writes nothing.

    Raises:
      StudyError: fewer than two arms, arms without shared identities or with too few seeds,
        an identity without private images, or arms of different image sizes.
      DataError, FileNotFoundError: missing private data or attack output (named).
    """
    arms = arm_dirs(config)
    study = config.study
    loaded = {name: _load_arm(name, path) for name, path in arms.items()}
    sizes = {name: v['arrays']['images'].shape[1:3] for name, v in loaded.items()}
    if len(set(sizes.values())) > 1:
        raise StudyError(f'the arms have reconstructions of different sizes: {sizes}')
    ids = _identities(loaded, study.identities, config.seed)
    per_seed = study.seeds_per_identity
    chosen: dict[str, dict[int, np.ndarray]] = {}
    for name, v in loaded.items():
        chosen[name] = {}
        for i in ids:
            found = _by_seed(v['arrays'], i)
            if len(found) < per_seed:
                raise StudyError(
                    f'arm {name!r} has {len(found)} reconstruction(s) of identity {i}, fewer '
                    f'than study.seeds_per_identity={per_seed}'
                )
            chosen[name][i] = found[:per_seed]

    dc = config.data
    source = data.get_source(
        dc.name, dc.split, root=dc.root, data_dir=dc.data_dir, **dict(dc.get('kwargs') or {})
    )
    size = study.reference_size or int(next(iter(sizes.values()))[0])
    prep = preprocess.get_preprocess(dc.name, size)
    labels = np.asarray(source.labels)
    rng = np.random.default_rng([config.seed, 2])

    images: dict[str, dict[str, Any]] = {}
    payloads: dict[str, bytes] = {}

    def add(pixels: np.ndarray, **origin: Any) -> str:
        payload = _png(pixels)
        digest = _sha256(payload)
        name = f'{digest}.png'
        payloads[name] = payload
        images.setdefault(name, {'sha256': digest, **origin})
        return name

    references: dict[int, list[str]] = {}
    for i in ids:
        pool = np.flatnonzero(labels == i)
        if len(pool) == 0:
            raise StudyError(
                f'identity {i} has no image in {dc.name}/{dc.split}: the arms were not made '
                'against this private data'
            )
        take = min(study.references_per_trial, len(pool))
        picked = sorted(int(j) for j in rng.choice(pool, take, replace=False))
        references[i] = [
            add(prep(source[j]['image']), kind='reference', identity=i, index=j) for j in picked
        ]

    def recon(name: str, i: int, s: int) -> str:
        index = int(chosen[name][i][s])
        arrays = loaded[name]['arrays']
        return add(
            arrays['images'][index],
            kind='reconstruction',
            arm=name,
            identity=i,
            seed=int(arrays['seed'][index]),
        )

    names = list(arms)
    trials, attention = [], []
    for i in ids:
        for s in range(per_seed):
            for a, b in itertools.combinations(names, 2):
                trials.append(
                    {
                        'id': f'p{len(trials):05d}',
                        'kind': 'pair',
                        'identity': i,
                        'seed_index': s,
                        'arms': [a, b],
                        'references': references[i],
                        'options': {a: recon(a, i, s), b: recon(b, i, s)},
                    }
                )
        arm = names[len(attention) % len(names)]
        attention.append(
            {
                'id': f'a{len(attention):05d}',
                'kind': 'attention',
                'identity': i,
                'seed_index': 0,
                'arms': [arm, stats.REFERENCE],
                'references': references[i],
                'options': {arm: recon(arm, i, 0), stats.REFERENCE: references[i][0]},
            }
        )

    body = {
        'version': VERSION,
        'title': study.title,
        'question': study.question,
        'seed': config.seed,
        'attention_rate': study.attention_rate,
        'min_attention': study.min_attention,
        'display_size': study.display_size,
        'arms': [
            {
                'name': name,
                'attack_dir': os.path.abspath(arms[name]),
                'attack': loaded[name]['meta'].get('attack', ''),
                'reconstructions_sha256': loaded[name]['sha256'],
            }
            for name in names
        ],
        'data': {'name': dc.name, 'split': dc.split, 'reference_size': size},
        'identities': ids,
        'trials': trials,
        'attention': attention,
        'images': images,
    }
    return {**body, 'study_hash': _study_hash(body)}, payloads


def write(workdir: str, manifest: Mapping[str, Any], payloads: Mapping[str, bytes]) -> None:
    """Writes the images, then the manifest (last: it marks a finished preparation)."""
    os.makedirs(os.path.join(workdir, IMAGE_DIR), exist_ok=True)
    for name, payload in payloads.items():
        path = os.path.join(workdir, IMAGE_DIR, name)
        if not os.path.exists(path):
            with atomic.open_for_write(path, 'wb') as f:
                f.write(payload)
    atomic.write_json(os.path.join(workdir, MANIFEST), manifest, indent=1, sort_keys=True)


def _study_hash(body: Mapping[str, Any]) -> str:
    return _sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode())


def exists(workdir: str) -> bool:
    """Whether `workdir` holds a prepared study."""
    return os.path.isfile(os.path.join(workdir, MANIFEST))


def load(workdir: str) -> dict[str, Any]:
    """The prepared study's manifest.

    Raises:
      FileNotFoundError: no study was prepared in `workdir` (says how to make one).
      StudyError: the manifest is unreadable or its hash does not match its content.
    """
    path = os.path.join(workdir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'No prepared study: {path} does not exist; run launch/userstudy.py with '
            '--config.mode=prepare (or serve) and the arms first'
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise StudyError(f'{path} is unreadable ({e}); prepare the study again') from e
    body = {k: v for k, v in manifest.items() if k != 'study_hash'}
    if manifest.get('study_hash') != _study_hash(body):
        raise StudyError(f'{path} was edited after it was prepared (its study_hash differs)')
    return manifest


def verify(workdir: str, manifest: Mapping[str, Any]) -> None:
    """Checks that every image of the study is present and unchanged.

    Raises:
      StudyError: naming the missing or changed images.
    """
    bad = []
    for name, info in manifest['images'].items():
        path = os.path.join(workdir, IMAGE_DIR, name)
        try:
            with open(path, 'rb') as f:
                ok = _sha256(f.read()) == info['sha256']
        except OSError:
            ok = False
        if not ok:
            bad.append(name)
    if bad:
        raise StudyError(
            f'{len(bad)} image(s) of the study in {os.path.join(workdir, IMAGE_DIR)} are '
            f'missing or changed (e.g. {bad[0]}); the study cannot be served as prepared'
        )


def trial_index(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`{trial id: trial}` over pair trials and the attention pool."""
    return {t['id']: t for t in [*manifest['trials'], *manifest.get('attention', [])]}
