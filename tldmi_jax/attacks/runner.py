"""`run(config, workdir)`: the attack stage: attack identity batches, save reconstructions.

The attack module (`tldmi_jax.attacks.ATTACKS`) supplies the problem; this file only loads
and checks the finished inputs (target, prior, LOMMA's augmented models), iterates over
identity batches with `LatentSearch`, and writes `reconstructions.npz`
(`tldmi_jax.reconstructions`), one PNG grid per batch and `attack.json`. All inputs are
checked before anything is written, so a bad input leaves no partial workdir. Under
`:runlocal` the launcher makes missing inputs first (`tldmi_jax.pipelines.runlocal`).
"""

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from tldmi_jax import attacks, classifiers, config_lib, data, priors, reconstructions
from tldmi_jax.attacks import common, latent_search
from tldmi_jax.data import pipeline, preprocess
from tldmi_jax.reporting import grids
from tldmi_jax.utils import atomic, distributed, metrics, npz, sharding
from tldmi_jax.utils import workdir as workdir_lib


def identity_batches(config: ml_collections.ConfigDict, num_classes: int) -> list[np.ndarray]:
    """The attacked identities, in batches (original: 0..299 in 5 batches of 60)."""
    ids = np.arange(config.identities.first, config.identities.first + config.identities.count)
    if len(ids) == 0:
        raise ValueError('No identities to attack (identities.count is 0).')
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if len(bad):
        raise ValueError(
            f'Identities {bad.min()}..{bad.max()} are outside the target classes 0..'
            f'{num_classes - 1}.'
        )
    size = config.identities.batch_size
    return [ids[i : i + size].astype(np.int32) for i in range(0, len(ids), size)]


@dataclasses.dataclass
class _Inputs:
    ctx: common.AttackContext
    target_meta: dict
    prior_meta: dict
    batches: list
    cfg: ml_collections.ConfigDict
    spec: attacks.Spec


def _check_prior(prior: priors.Prior, spec: attacks.Spec, path: str, num_classes: int) -> None:
    """The prior is of the attack's kind and, if conditional, of the target's classes."""
    kind = spec.module.PRIOR_KIND
    if prior.kind != kind:
        raise ValueError(
            f'Attack {spec.label} needs a {kind} prior; {path} holds a {prior.kind} prior.'
        )
    if prior.kind in ('kedmi', 'plgmi') and prior.num_classes != num_classes:
        raise ValueError(
            f'The {prior.kind} prior {path} was trained for a target with {prior.num_classes} '
            f'classes, but the target has {num_classes}; train the prior against this target '
            '(launch/train_gan.py --config.target.checkpoint=...)'
        )


def _load_inputs(config: ml_collections.ConfigDict, workdir: str) -> _Inputs:
    """Loads and checks every input; raises ValueError before anything is written."""
    spec = attacks.resolve(config.attack)
    cfg = attacks.hyperparameters(config.attack)
    sharding.check_devices(config.get('devices', 0))
    target_path = config.target.checkpoint
    if not target_path:
        raise ValueError('Set --config.target.checkpoint (a trainer workdir or model dir).')
    model, variables = classifiers.load(target_path, arch=config.target.get('arch'))
    num_classes = model.num_classes
    target_size = classifiers.input_size(target_path, config.data.image_size)
    if not config.prior.checkpoint:
        raise ValueError('Set --config.prior.checkpoint (a train_gan workdir or prior dir).')
    prior = priors.load_prior(config.prior.checkpoint)
    _check_prior(prior, spec, config.prior.checkpoint, num_classes)
    batches = identity_batches(config, num_classes)
    target = classifiers.bind(model, variables)
    augmented = []
    if cfg.get('use_augmented'):
        paths = [p for p in (config.augmented.checkpoints or '').split(',') if p]
        if not paths:
            raise ValueError('This LOMMA variant needs --config.augmented.checkpoints=DIR,DIR,...')
        for path in paths:
            aug_model, aug_vars = classifiers.load(path)
            if aug_model.num_classes != num_classes:
                raise ValueError(
                    f'Augmented model {path} has {aug_model.num_classes} classes; '
                    f'the target has {num_classes}.'
                )
            augmented.append(classifiers.bind(aug_model, aug_vars))
    p_reg = None
    if spec.lomma and cfg.get('reg_weight'):
        p_reg = _p_reg(config, cfg, target, target_size, workdir)
    ctx = common.AttackContext(
        prior=prior,
        target=target,
        augmented=tuple(augmented),
        num_classes=num_classes,
        image_size=target_size,
        p_reg=p_reg,
    )
    target_meta = {
        'arch': type(model).__name__,
        'checkpoint': target_path,
        'num_classes': num_classes,
        'image_size': target_size,
        'fingerprint': classifiers.fingerprint(variables),
    }
    prior_meta = {
        'kind': prior.kind,
        'checkpoint': config.prior.checkpoint,
        'fingerprint': classifiers.fingerprint(prior.variables),
    }
    return _Inputs(ctx, target_meta, prior_meta, batches, cfg, spec)


def _p_reg(config, cfg, target, image_size: int, workdir: str) -> np.ndarray:
    """LOMMA's p_reg on up to `p_reg_samples` public images (cached in the workdir)."""
    path = os.path.join(workdir, 'p_reg.npy')
    cached = npz.load_cached_array(path, 'LOMMA p_reg cache')
    if cached is not None:
        return cached
    dc = config.data
    source = data.get_source(
        dc.name, 'public', root=dc.root, data_dir=dc.data_dir, **(dc.get('kwargs') or {})
    )
    n = min(len(source), int(cfg.p_reg_samples))
    batch = pipeline.load_all(source, np.arange(n), preprocess.get_preprocess(dc.name, image_size))
    value = common.public_feature_mean(target, np.asarray(batch['image'], np.float32))
    if distributed.is_main():  # Every process of a multi-process run computes it; one writes.
        with atomic.replacing(path) as tmp:
            np.save(tmp, value)
    return value


def _batch_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, 'batches', f'batch_{index:03d}.npz')


def _read_batch(path: str) -> dict[str, np.ndarray]:
    """A finished identity batch's arrays (read without pickle)."""
    fix = 'delete it and rerun the same command (that identity batch is attacked again)'
    return npz.load(path, 'finished identity batch', fix=fix)


def _batch_outputs(workdir: str, index: int, writer: metrics.MetricWriter, logged: set) -> None:
    """The grid and the metrics record of a finished batch, unless a previous run made them.

    The batch file is the mark of a finished batch, so a run killed after writing it but
    before these makes them on the rerun (from the file, with the same content).
    """
    grid = os.path.join(workdir, 'grids', f'batch_{index:03d}.png')
    if os.path.exists(grid) and index in logged:
        return
    stored = _read_batch(_batch_path(workdir, index))
    if not os.path.exists(grid):
        grids.save_grid(
            grid,
            stored['images'],
            ncol=int(stored['seed'].max()) + 1,
            captions=[str(i) for i in stored['identity']],
        )
    if index not in logged:
        aux = json.loads(str(stored['losses']))
        writer.write(index, {f'attack/final_{k}': v for k, v in aux.items()})


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the attack of `config` in `workdir`; returns the attack summary."""
    metrics.quiet_libraries()
    workdir_lib.prepare(config, workdir)
    inputs = _load_inputs(config, workdir)
    cfg = inputs.cfg
    problem = inputs.spec.module.make_problem(inputs.ctx, cfg)  # LOMMA: the base, configured.
    workdir_lib.save_config(config, workdir)  # Inputs checked: the run starts here.
    main = distributed.is_main()  # In a multi-process run only process 0 writes files.
    if main:
        os.makedirs(os.path.join(workdir, 'batches'), exist_ok=True)
    search = latent_search.LatentSearch(
        problem,
        num_seeds=cfg.num_seeds,
        key=jax.random.fold_in(jax.random.key(config.seed), 7),
        checkpoint_every=config.checkpoint_every_steps,
        devices=config.get('devices', 0),
        seed_chunk=cfg.get('seed_chunk') or 0,
    )
    writer = metrics.MetricWriter(workdir, tensorboard=False)
    logged = {r['step'] for r in metrics.read_metrics(workdir)}
    tic = time.perf_counter()
    steps_run = 0
    for index, ids in enumerate(inputs.batches):
        path = _batch_path(workdir, index)
        if _finished(path):
            logging.info('Identity batch %d already finished.', index)
        else:
            _, images, aux = search.run_batch(
                ids,
                cfg.steps,
                ckpt_dir=os.path.join(workdir, 'checkpoints', f'batch_{index:03d}'),
                progress=f'{inputs.spec.label} batch {index + 1}/{len(inputs.batches)}',
            )
            steps_run += cfg.steps
            b, s, k = images.shape[:3]
            if main:
                atomic.savez(
                    path,
                    images=images.reshape(b * s * k, *images.shape[3:]),
                    identity=np.repeat(ids, s * k),
                    seed=np.tile(np.arange(s * k), b),
                    losses=json.dumps(aux),
                )
            distributed.barrier(f'attack:{workdir}:batch_{index}')  # The file is there.
        if main:
            _batch_outputs(workdir, index, writer, logged)
    wall = time.perf_counter() - tic
    arrays = [_read_batch(_batch_path(workdir, i)) for i in range(len(inputs.batches))]
    images = np.concatenate([a['images'] for a in arrays])
    identity = np.concatenate([a['identity'] for a in arrays])
    seed = np.concatenate([a['seed'] for a in arrays])
    batch = np.concatenate([np.full(len(a['identity']), i) for i, a in enumerate(arrays)])
    final_losses = [json.loads(str(a['losses'])) if 'losses' in a else {} for a in arrays]
    ids = [int(i) for b in inputs.batches for i in b]
    protocol = {
        'attack': inputs.spec.label,
        'hyperparameters': protocol_hyperparameters(inputs.spec, cfg),
        'identities': ids,
        'seed': config.seed,
        'target': inputs.target_meta['fingerprint'],
        'prior': inputs.prior_meta['fingerprint'],
    }
    summary = {
        'attack': inputs.spec.label,
        'hyperparameters': cfg.to_dict(),
        'target': inputs.target_meta,
        'prior': inputs.prior_meta,
        'identities': ids,
        # Kept per identity, from the stored images (PPA keeps `final` of its `num_seeds`).
        'num_seeds': len(identity) // len(ids) // int(cfg.get('samples', 1)),
        'samples': int(cfg.get('samples', 1)),
        'image_size': int(images.shape[1]),
        'num_reconstructions': int(len(images)),
        'final_losses': final_losses,
        'protocol_hash': config_lib.protocol_hash(protocol),
        'wall_seconds_this_run': wall,
        'iterations_per_second': steps_run / wall if steps_run else None,
    }
    if main:
        reconstructions.save(workdir, images, identity, seed, batch, summary)
    writer.close()
    distributed.barrier(f'attack:{workdir}:done')
    return summary


# Options every attack has that set batching, not the result (up to float rounding): the
# seeds optimised per call (`LatentSearch`'s seed_chunk).
EXECUTION_ONLY = ('seed_chunk',)


def protocol_hyperparameters(spec: attacks.Spec, cfg: ml_collections.ConfigDict) -> dict:
    """The hyperparameters that enter the protocol hash: all but `EXECUTION_ONLY` and the
    attack's own `EXECUTION_ONLY` settings of memory and batching, which leave the result
    unchanged (up to float rounding)."""
    execution = (*EXECUTION_ONLY, *getattr(spec.module, 'EXECUTION_ONLY', ()))
    return {k: v for k, v in cfg.to_dict().items() if k not in execution}


def _finished(path: str) -> bool:
    """Whether an identity batch has finished, as process 0 sees it (every process then
    attacks the same batches, even on a filesystem that shows a new file late)."""
    return distributed.broadcast_from_main(os.path.exists(path))
