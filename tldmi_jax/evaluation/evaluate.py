"""`evaluate(config, workdir)`: every metric of the MI protocol for one attack output.

Inputs: the reconstructions of an attack workdir (`config.attack_dir`,
`tldmi_jax.reconstructions`), the evaluation model (`config.eval_model.checkpoint`: the
112 px FaceNet/IR-50 trained with `configs/eval_celeba.py`, or PPA's 299 px Inception-v3),
the private data (`config.data`), the target (`config.target.checkpoint`, else the one
`attack.json` names), for FID/KID/PRDC converted FID Inception weights
(`config.fid.inception_checkpoint`) and, for PPA's delta_face, a converted FaceNet
(`config.face_model.checkpoint`).

Two protocols (`config.distance`, `knn.DISTANCES`): `knn_squared_min`, TL-DMI's 64 px one
(`configs/evaluate_celeba.py`), reports `attack/knn_dist`; `ppa`, Plug & Play Attacks' 224 px
one (`configs/evaluate_ppa.py`), reports the same distance as `attack/delta_eval` and adds
`attack/delta_face` in FaceNet's embedding. PPA's FID takes all reconstructions
(`config.fid.reconstructions='all'`) against private images resized straight to 299 px
(`config.fid.real_size='inception'`).

Outputs in `workdir`: `metrics.json` (`attack/acc@1`, `attack/acc@1_std`,
`attack/acc@1_ci95` (the half-width of a 95 % interval of acc@1 over seeds, identities as
fixed strata: `attack_acc.stratified_interval`), `attack/acc@5`, `attack/acc@5_std`,
`attack/num_classes` (the evaluation model's), `attack/knn_dist` or `attack/delta_eval`
and `attack/delta_face`, `attack/fid`, `attack/kid`, `attack/precision`, `attack/recall`,
`attack/density`, `attack/coverage`, `target/natural_acc`, `protocol_hash`, ...; null where
skipped),
`metrics.jsonl`, `per_identity.csv`, `per_reconstruction.csv` (identity, seed, batch,
acc@1, acc@5, distances and confidence of every reconstruction: what paired comparisons of
two attacks need), `groups.csv`, `pairs.png`, `report.md`, `config.json`
and `feature_cache/`.

Reconstructions are resized bilinearly to each network's input (64 -> 112 in the 64 px
protocol; 224 -> 299 and 224 -> 160 in PPA's; see `features`). Without Inception weights
(and outside runlocal) FID, KID and PRDC are skipped with a warning naming
`config.fid.inception_checkpoint`, and without FaceNet weights delta_face with one naming
`config.face_model.checkpoint`; nothing is ever downloaded. With `config.runlocal` the tiny
Inception and FaceNet run with random weights (the launcher makes missing upstream
artefacts first, `tldmi_jax.pipelines.runlocal`).
"""

import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from tldmi_jax import classifiers, config_lib, data, reconstructions
from tldmi_jax.data import pipeline, preprocess
from tldmi_jax.evaluation import attack_acc, face, features, fid, knn, report
from tldmi_jax.models import inception, inception_resnet_v1
from tldmi_jax.reporting import files
from tldmi_jax.utils import checkpoint, distributed, metrics
from tldmi_jax.utils import workdir as workdir_lib

FID_FIELD = 'config.fid.inception_checkpoint'
# `config.distance` -> (arch, input size) of the evaluation model when neither the config nor
# the checkpoint's config.json names them: TL-DMI's FaceNet, PPA's Inception-v3.
EVAL_FALLBACK = {'knn_squared_min': ('facenet', 112), 'ppa': ('inception_v3', 299)}
# `config.fid.reconstructions`: the fake set (TL-DMI: successful ones; PPA: all).
FID_RECONSTRUCTIONS = ('successful', 'all')
# `config.fid.real_size`: the side private images are preprocessed to before the Inception's
# own resize (TL-DMI: the reconstructions'; PPA: straight to the Inception's 299 px).
FID_REAL_SIZES = ('reconstructions', 'inception')


def _source(config: ml_collections.ConfigDict, split: str):
    dc = config.data
    return data.get_source(
        dc.name, split, root=dc.root, data_dir=dc.data_dir, **dict(dc.get('kwargs') or {})
    )


def _preprocess(config: ml_collections.ConfigDict, size: int) -> pipeline.Preprocess:
    """The private images' preprocessing at `size` (`config.data.preprocess`, else the name)."""
    return preprocess.get_preprocess(config.data.get('preprocess') or config.data.name, size)


def _check_options(config: ml_collections.ConfigDict) -> None:
    """Refuses unknown protocol options before anything is computed or written.

    Raises:
      ValueError: naming the field and its valid values.
    """
    knn.distance_metrics(config.distance)
    choices = (
        ('fid.reconstructions', config.fid.reconstructions, FID_RECONSTRUCTIONS),
        ('fid.real_size', config.fid.real_size, FID_REAL_SIZES),
        ('face_model.input_mapping', config.face_model.input_mapping, features.FACE_INPUT_MAPPINGS),
        ('face_model.arch', config.face_model.arch, inception_resnet_v1.FACE_MODELS),
    )
    for field, value, valid in choices:
        if value not in valid:
            raise ValueError(f'config.{field}={value!r}: use one of {sorted(valid)}.')


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_inception(config: ml_collections.ConfigDict) -> tuple[Any, Any, str] | None:
    """The FID Inception and its variables, or None (with a warning) when there are none.

    Weights come only from `config.fid.inception_checkpoint` (an orbax model checkpoint,
    converted once from pytorch-fid's `pt_inception-2015-12-05`); with `config.runlocal`
    and no checkpoint, `config.fid.arch` runs with random weights.
    """
    model = inception.get_inception(config.fid.arch)
    path = config.fid.inception_checkpoint
    if path:
        return model, features.load_fixed_model(model, path), path
    if config.runlocal:
        logging.warning('runlocal: FID/KID/PRDC use %s with RANDOM weights.', config.fid.arch)
        return model, inception.random_variables(model, config.seed), 'random weights'
    logging.warning(
        'FID, KID and PRDC skipped: no Inception weights. Set --%s=/path/to/orbax checkpoint '
        'converted from pytorch-fid pt_inception-2015-12-05 (never downloaded).',
        FID_FIELD,
    )
    return None


def _distribution_metrics(
    config, cache, recon, success, source, indices, split_key
) -> tuple[dict[str, float], list[str]]:
    """FID, KID and PRDC between (successful or all) reconstructions and private images."""
    keys = ('attack/fid', 'attack/kid', 'attack/precision', 'attack/recall', 'attack/density')
    result = dict.fromkeys((*keys, 'attack/coverage'), float('nan'))
    if not config.fid.enabled:
        return result, ['FID/KID/PRDC disabled (`config.fid.enabled=False`).']
    loaded = load_inception(config)
    if loaded is None:
        return result, [f'FID/KID/PRDC skipped: set `{FID_FIELD}` to the converted weights.']
    model, variables, origin = loaded
    notes = [f'Inception: `{config.fid.arch}` ({origin}).']
    mapping = bool(config.fid.original_range_mapping)
    if mapping:
        notes.append('FID uses the original pixel mapping (x*0.5+0.5)*255: not standard FID.')
    fn = features.inception_fn(model, variables, original_range_mapping=mapping)
    bs = config.fid.batch_size
    size = recon.shape[1] if config.fid.real_size == 'reconstructions' else model.IMAGE_SIZE
    max_real = int(config.fid.max_real or 0)
    if max_real and len(indices) > max_real:
        rng = np.random.default_rng(config.seed)
        indices = np.sort(rng.choice(indices, max_real, replace=False))
    key = {
        'inception': classifiers.variables_hash(variables),
        'arch': config.fid.arch,
        'original_range_mapping': mapping,
        'data': split_key,
        'indices': pipeline.array_hash(indices),
        'image_size': size,
    }
    prep = _preprocess(config, size)
    real = cache.get_or_compute(
        'inception',
        key,
        lambda: {'features': features.run_on_source(fn, source, indices, prep, bs)[0][0]},
    )['features']
    which = config.fid.reconstructions
    chosen = success if which == 'successful' else np.ones(len(recon), bool)
    label = 'successful reconstructions' if which == 'successful' else 'reconstructions (all)'
    if chosen.sum() < 2:
        notes.append(f'Only {int(chosen.sum())} {label}: FID/KID/PRDC n/a.')
        return result, notes
    fake = classifiers.run_batched(fn, recon[chosen], bs)[0]
    result['attack/fid'] = fid.fid_score(real, fake)
    result['attack/kid'] = fid.kid(
        real,
        fake,
        num_subsets=config.fid.kid_subsets,
        max_subset_size=config.fid.kid_subset_size,
        seed=config.seed,
    )
    for k, v in fid.prdc(real, fake, k=config.fid.prdc_k).items():
        result[f'attack/{k}'] = v
    notes.append(f'FID/KID/PRDC: {int(chosen.sum())} {label} vs {len(real)} private images.')
    return result, notes


def load_target(
    config: ml_collections.ConfigDict, meta: dict[str, Any]
) -> tuple[Any, Any, int] | None:
    """The target `(model, variables, image_size)`, or None (with a warning) if there is none.

    The target is `config.target.checkpoint`, else the checkpoint `attack.json` names (if it
    exists on this machine). When `attack.json` records the fingerprint of the target the
    attack was made against, a different target is refused.

    Raises:
      ValueError: the target is not the one the reconstructions were made against.
    """
    block = config.target.copy_and_resolve_references()
    recorded = meta.get('target', {}) or {}
    if not block.checkpoint:
        path = recorded.get('checkpoint')
        if not path or not os.path.isdir(path):
            logging.warning(
                'target/natural_acc skipped: set --config.target.checkpoint (attack.json names '
                '%r).',
                path,
            )
            return None
        block.checkpoint = path
    model, variables, size = classifiers.load_block(
        block,
        fallback_arch=recorded.get('arch'),
        fallback_size=meta.get('image_size'),
        name='target',
    )
    reconstructions.check_target(
        config.attack_dir, meta, block.checkpoint, classifiers.fingerprint(variables)
    )
    return model, variables, size


def natural_accuracy(config: ml_collections.ConfigDict, target: tuple[Any, Any, int]) -> float:
    """Top-1 accuracy of the target `(model, variables, size)` on the private test split."""
    model, variables, size = target
    source = _source(config, config.data.test_split)
    prep = _preprocess(config, size)
    test = pipeline.load_all(source, np.arange(len(source)), prep)
    res = classifiers.evaluate(
        classifiers.jit_apply(model), variables, test['image'], test['label'], config.batch_size
    )
    return res['acc@1']


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Evaluates the reconstructions of `config.attack_dir`; writes the outputs in `workdir`.

    Args:
      config: see `configs/evaluate_celeba.py` and `configs/evaluate_ppa.py`.
      workdir: output directory (the feature cache lives there too).

    Returns:
      The contents of `metrics.json` (NaN where a metric was skipped).
    """
    metrics.quiet_libraries()
    workdir_lib.prepare(config, workdir)
    if not config.attack_dir or not config.eval_model.checkpoint:
        raise ValueError('Set --config.attack_dir and --config.eval_model.checkpoint.')
    _check_options(config)
    names = knn.distance_metrics(config.distance)
    with_face = 'face' in names and config.face_model.enabled
    recon, meta = reconstructions.load(config.attack_dir)
    images, identity = recon['images'], recon['identity'].astype(np.int64)
    fallback_arch, fallback_size = EVAL_FALLBACK[config.distance]
    model, variables, eval_size = classifiers.load_block(
        config.eval_model,
        fallback_arch=fallback_arch,
        fallback_size=fallback_size,
        name='eval_model',
    )
    eval_fn = features.resized_fn(model, variables, eval_size)
    recon_feats, logits = classifiers.run_batched(eval_fn, images, config.batch_size)
    if identity.min() < 0 or identity.max() >= logits.shape[1]:
        raise ValueError(
            f'Identities {identity.min()}..{identity.max()} are outside the evaluation '
            f"model's {logits.shape[1]} classes."
        )
    target = load_target(config, meta)
    if config.fid.enabled and config.fid.inception_checkpoint:
        checkpoint.find_model_dir(config.fid.inception_checkpoint)  # Missing: fail up front.
    if with_face and config.face_model.checkpoint:
        face.model_dir(config.face_model.checkpoint)  # The same for the FaceNet.
    workdir_lib.save_config(config, workdir)  # The inputs are valid: the run starts here.
    acc = attack_acc.attack_accuracy(
        logits,
        identity,
        recon['seed'],
        recon['batch'],
        reproduce_top5_bug=config.reproduce_top5_bug,
    )
    confidence = _softmax(logits.astype(np.float64))[np.arange(len(identity)), identity]

    source = _source(config, config.data.train_split)
    split_key = pipeline.split_fingerprint(
        config.data.name, config.data.train_split, source, config.data.get('kwargs')
    )
    if config.data.get('preprocess'):  # Keyed only when set: older caches and hashes hold.
        split_key['preprocess'] = config.data.preprocess
    ids = np.unique(identity)
    indices = np.flatnonzero(np.isin(np.asarray(source.labels), ids))
    cache = features.FeatureCache(os.path.join(workdir, 'feature_cache'))
    eval_hash = classifiers.variables_hash(variables)
    prep = _preprocess(config, eval_size)

    def private_features():
        (feats, _), labels = features.run_on_source(
            eval_fn, source, indices, prep, config.batch_size
        )
        return {'features': feats, 'labels': labels, 'indices': indices}

    key = {'model': eval_hash, 'image_size': eval_size, 'data': split_key}
    key['indices'] = pipeline.array_hash(indices)
    private = cache.get_or_compute('eval', key, private_features)
    dist, nearest = knn.knn_distances(
        recon_feats,
        identity,
        private['features'],
        private['labels'],
        chunk_size=config.knn.chunk_size,
    )

    dist_metrics, notes = _distribution_metrics(
        config, cache, images, acc.correct1, source, indices, split_key
    )
    distances = {names['eval']: dist}
    if 'face' in names:
        distances[names['face']], face_notes = face.face_distances(
            config,
            cache,
            images,
            identity,
            source,
            indices,
            split_key,
            lambda size: _preprocess(config, size),
        )
        notes += face_notes
    natural = None if target is None else natural_accuracy(config, target)
    if natural is None:
        notes.append('Target natural accuracy skipped: set `config.target.checkpoint`.')
    if config.reproduce_top5_bug:
        notes.append('acc@5 reproduces the original code (last seed per batch), not the mean.')

    ci = attack_acc.stratified_interval(acc.correct1, identity)
    result = {
        **acc.metrics,
        'attack/acc@1_ci95': ci['half_width'],
        'attack/num_classes': int(logits.shape[1]),
        **{k: float('nan') if d is None else float(np.mean(d)) for k, d in distances.items()},
        **dist_metrics,
        'target/natural_acc': float('nan') if natural is None else natural,
        'attack/num_reconstructions': len(identity),
        'attack/num_successful': int(acc.correct1.sum()),
        'attack/num_identities': len(ids),
        'attack_protocol_hash': meta.get('protocol_hash'),
        'protocol_hash': config_lib.protocol_hash(
            {
                'identities': ids.tolist(),
                'seeds': np.unique(recon['seed']).tolist(),
                'eval_model': eval_hash,
                'data': split_key,
                # Only PPA's is named: the 64 px protocol's hashes stay as they were.
                **({} if config.distance == 'knn_squared_min' else {'distance': config.distance}),
            }
        ),
    }
    if distributed.is_main():  # Every process of a multi-process run computes; one writes.
        _write_outputs(
            config,
            workdir,
            result,
            recon=recon,
            meta=meta,
            acc=acc,
            confidence=confidence,
            distances=distances,
            nearest=nearest,
            notes=notes,
            source=source,
            private_indices=private['indices'],
            eval_desc=f'`{config.eval_model.checkpoint}` ({eval_size} px, params hash {eval_hash})',
        )
    distributed.barrier(f'evaluate:{workdir}')
    return result


def _write_outputs(
    config: ml_collections.ConfigDict,
    workdir: str,
    result: dict[str, Any],
    *,
    recon: dict[str, np.ndarray],
    meta: dict[str, Any],
    acc: attack_acc.AttackAccuracy,
    confidence: np.ndarray,
    distances: dict[str, np.ndarray | None],
    nearest: np.ndarray,
    notes: list[str],
    source: Any,
    private_indices: np.ndarray,
    eval_desc: str,
) -> None:
    """Writes metrics.json/.jsonl, the CSV tables, the pairs grid and report.md.

    `distances`: per-reconstruction distances by metric name (the first: the evaluation
    model's, whose nearest private images `nearest` indexes; None: not computed).
    """
    identity = recon['identity']
    dist = next(iter(distances.values()))
    columns = {'acc@1': acc.correct1, 'acc@5': acc.correct5}
    columns.update({k.split('/')[-1]: d for k, d in distances.items() if d is not None})
    files.write_json(os.path.join(workdir, 'metrics.json'), result)
    metrics.truncate(workdir, -1)  # One record: this evaluation's, not one per attempt.
    writer = metrics.MetricWriter(workdir, tensorboard=False)
    scalars = {k: v for k, v in result.items() if not isinstance(v, str | None)}
    writer.write(0, scalars, log=False)
    writer.close()
    rows = attack_acc.per_identity(identity, {**columns, 'confidence': confidence})
    files.write_csv(os.path.join(workdir, 'per_identity.csv'), rows)
    per_recon = {'identity': identity, 'seed': recon['seed'], 'batch': recon['batch']}
    per_recon.update({k: np.asarray(v, np.float64) for k, v in columns.items()})
    per_recon['confidence'] = confidence
    files.write_csv(
        os.path.join(workdir, 'per_reconstruction.csv'),
        [
            {
                k: (int(v[i]) if k in ('identity', 'seed', 'batch') else float(v[i]))
                for k, v in per_recon.items()
            }
            for i in range(len(identity))
        ],
    )
    files.write_csv(os.path.join(workdir, 'groups.csv'), acc.groups)

    order = np.lexsort((recon['batch'], recon['seed'], identity))[: config.report.max_pairs]
    grid = None
    if len(order):
        size = recon['images'].shape[1]
        prep = _preprocess(config, size)
        near_idx = private_indices[nearest[order]]
        near_images = pipeline.load_all(source, near_idx, prep)['image']
        grid = report.save_pairs_grid(
            os.path.join(workdir, 'pairs.png'),
            recon['images'][order],
            near_images,
            [f'#{identity[i]} {confidence[i]:.2f}' for i in order],
            [f'd={dist[i]:.3g}' for i in order],
            pairs_per_row=config.report.pairs_per_row,
        )
    info = {
        'attack': f'{meta.get("attack", "unknown")} (`{config.attack_dir}`)',
        'reconstructions': (
            f'{len(identity)} images of {len(np.unique(identity))} identities, '
            f'{len(np.unique(recon["seed"]))} seeds, {len(np.unique(recon["batch"]))} batches'
        ),
        'evaluation model': eval_desc,
        'data': f'{config.data.name} / {config.data.train_split}',
        'protocol hash': result['protocol_hash'],
    }
    report.write_report(
        os.path.join(workdir, 'report.md'), result, info=info, notes=notes, grid=grid
    )
    logging.info('Evaluation written to %s\n%s', workdir, report.format_table(result))
