"""GAN training of the priors: GMI (WGAN-GP), KEDMI (per target) and PLG-MI (per target).

`train_and_evaluate(config, workdir)` trains `config.prior.kind` on the public split of
`config.data.name` and writes `workdir/prior` (`tldmi_jax.priors.load_prior` reads it).
G and D live in one `GanState` with two Adam states; the D step runs every step and the G
step every `n_critic` steps (after the D step as in GMI/KEDMI, before it as in PLG-MI).
Latents, interpolates, noise and augmentations use keys derived from (seed, step), and the
data order from (seed, epoch), so a resumed run equals an uninterrupted one.

KEDMI and PLG-MI need the target (`config.target.checkpoint`, a classifier workdir or
model dir); under `:runlocal` without one, the launcher trains a tiny target into
`workdir/target` first (`tldmi_jax.pipelines.runlocal`).
PLG-MI first pseudo-labels the public set: for each class the `top_n` images to which the
target gives the highest softmax probability (cached in `workdir/pseudo_labels.npz`).
"""

import dataclasses
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from tldmi_jax import classifiers, data, priors
from tldmi_jax.data import pipeline, preprocess
from tldmi_jax.reporting import grids
from tldmi_jax.train import gan_losses, loop
from tldmi_jax.utils import atomic, distributed, metrics, npz, sharding
from tldmi_jax.utils import workdir as workdir_lib

_NOT_OPTIONS = ('kind', 'num_classes')


class GanState(flax.struct.PyTreeNode):
    """Everything a resumed run needs; `step` counts D steps (data order follows it)."""

    step: jax.Array
    g_params: Any
    g_state: Any  # Non-parameter collections of G ('batch_stats').
    d_params: Any
    d_state: Any  # Non-parameter collections of D ('spectral' for plgmi, else empty).
    g_opt_state: Any
    d_opt_state: Any


def step_key(seed: int, step: jax.Array, tag: int) -> jax.Array:
    """The PRNG key of step `step` (tag 0: D step, 1: G step, 2: fixed sample latents)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), tag)


def make_d_step(d_loss, tx: optax.GradientTransformation, seed: int):
    """`(state, batch, target_vars) -> (state, metrics)`: one D update, `step += 1`."""

    def d_step(state: GanState, batch: dict, target_vars: Any):
        key = step_key(seed, state.step, 0)
        grad_fn = jax.value_and_grad(d_loss, has_aux=True)
        (_, (m, d_state, g_state)), grads = grad_fn(
            state.d_params, state.d_state, state.g_params, state.g_state, batch, target_vars, key
        )
        updates, opt_state = tx.update(grads, state.d_opt_state, state.d_params)
        m = {**m, 'd/grad_norm': optax.tree.norm(grads)}
        return state.replace(
            step=state.step + 1,
            d_params=optax.apply_updates(state.d_params, updates),
            d_opt_state=opt_state,
            d_state=d_state,
            g_state=g_state,
        ), m

    return d_step


def make_g_step(g_loss, tx: optax.GradientTransformation, seed: int):
    """`(state, batch, target_vars) -> (state, metrics)`: one G update (`step` unchanged)."""

    def g_step(state: GanState, batch: dict, target_vars: Any):
        key = step_key(seed, state.step, 1)
        grad_fn = jax.value_and_grad(g_loss, has_aux=True)
        (_, (m, g_state, d_state)), grads = grad_fn(
            state.g_params, state.g_state, state.d_params, state.d_state, batch, target_vars, key
        )
        updates, opt_state = tx.update(grads, state.g_opt_state, state.g_params)
        m = {**m, 'g/grad_norm': optax.tree.norm(grads)}
        return state.replace(
            g_params=optax.apply_updates(state.g_params, updates),
            g_opt_state=opt_state,
            g_state=g_state,
            d_state=d_state,
        ), m

    return g_step


def _split(variables: dict) -> tuple[Any, dict]:
    return variables['params'], {k: v for k, v in variables.items() if k != 'params'}


def initial_state(
    prior: Any, g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation
) -> GanState:
    """Step 0 of training `prior`'s generator and discriminator with `g_tx` and `d_tx`."""
    g_params, g_state = _split(prior.variables['generator'])
    d_params, d_state = _split(prior.variables['discriminator'])
    return GanState(
        step=jnp.asarray(0, jnp.int32),
        g_params=g_params,
        g_state=g_state,
        d_params=d_params,
        d_state=d_state,
        g_opt_state=g_tx.init(g_params),
        d_opt_state=d_tx.init(d_params),
    )


def prior_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The family options of `config.prior` (z_dim, g_dim, d_dim, ...)."""
    return {k: v for k, v in config.prior.to_dict().items() if k not in _NOT_OPTIONS}


class Relabelled:
    """A view of `base` records `indices` with new labels (the pseudo-labelled set)."""

    def __init__(self, base: data.Source, indices: np.ndarray, labels: np.ndarray):
        self._base, self._indices = base, np.asarray(indices, np.int64)
        self._labels = np.asarray(labels, np.int64)
        self.num_classes = int(self._labels.max()) + 1 if len(self._labels) else 0

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            'image': self._base[int(self._indices[index])]['image'],
            'label': int(self._labels[index]),
        }

    @property
    def labels(self) -> np.ndarray:
        return self._labels


def top_n_selection(probs: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """PLG-MI's top-n pseudo-labels: per class, the `top_n` records it is most probable for.

    Args:
      probs: [N, K] target softmax probabilities of the public records.
      top_n: records per class (a record may be chosen by several classes).

    Returns:
      `(indices int64 [K * top_n], labels int64 [K * top_n])`, class-major, each class's
      records in decreasing probability.
    """
    n, k = probs.shape
    if not 0 < top_n <= n:
        raise ValueError(f'top_n must be in 1..{n} (the public set size), got {top_n}.')
    order = np.argsort(-probs, axis=0, kind='stable')[:top_n]  # [top_n, K]
    return order.T.reshape(-1).astype(np.int64), np.repeat(np.arange(k, dtype=np.int64), top_n)


def _target_probs(target, target_vars, source, prep, batch_size: int) -> np.ndarray:
    """Softmax of the target on every record of `source`, in jitted padded batches."""
    apply = classifiers.apply_fn(target)
    predict = jax.jit(lambda v, x: jax.nn.softmax(apply(v, x)[1], -1))
    out = []
    for batch in pipeline.epoch_batches(
        source,
        np.arange(len(source)),
        batch_size,
        preprocess=prep,
        seed=0,
        epoch=0,
        shuffle=False,
        drop_remainder=False,
    ):
        images = pipeline.pad_batch(batch['image'], batch_size)
        out.append(np.asarray(predict(target_vars, images))[: len(batch['image'])])
    return np.concatenate(out)


def pseudo_labels(config, workdir, target_path, target, target_vars, source, prep):
    """Top-n pseudo-labels of the public set, cached in `workdir/pseudo_labels.npz`.

    The cache is reused only for the same target checkpoint, top_n and public-set size.
    """
    path = os.path.join(workdir, 'pseudo_labels.npz')
    key = dict(top_n=int(config.plgmi.top_n), num_public=len(source), target=target_path)
    cached = npz.load_cache(path, 'PLG-MI pseudo-label cache') or {}  # Damaged: rebuilt.
    if all(k in cached and cached[k].item() == v for k, v in key.items()):
        return cached['indices'], cached['labels']
    probs = _target_probs(target, target_vars, source, prep, config.batch_size)
    indices, labels = top_n_selection(probs, key['top_n'])
    if distributed.is_main():  # Every process computes the labels; one writes them.
        atomic.savez(path, indices=indices, labels=labels, **key)
    logging.info(
        'Pseudo-labelled %d of %d public images (top %d per class).',
        len(np.unique(indices)),
        key['num_public'],
        key['top_n'],
    )
    return indices, labels


def load_target(config: ml_collections.ConfigDict):
    """The target `(model, variables, num_classes, path)` for kedmi/plgmi; Nones for gmi."""
    kind = config.prior.kind
    if kind == 'gmi':
        return None, None, 0, None
    ckpt = config.target.get('checkpoint')
    if not ckpt:
        raise ValueError(
            f'The {kind} prior is trained against a target: set '
            '--config.target.checkpoint=<classifier workdir or model dir>.'
        )
    model, variables = classifiers.load(ckpt)
    size = config.data.image_size
    dummy = jax.ShapeDtypeStruct((1, size, size, config.prior.get('channels', 3)), jnp.float32)
    _, logits = jax.eval_shape(lambda x: classifiers.apply_fn(model)(variables, x), dummy)
    num_classes = int(logits.shape[-1])
    wanted = int(config.prior.num_classes or 0)
    if wanted and wanted != num_classes:
        raise ValueError(
            f'The target {ckpt} has {num_classes} classes but config.prior.num_classes is '
            f"{wanted}; they must match (0 takes the target's)."
        )
    return model, variables, num_classes, os.path.abspath(ckpt)


def _stream_seed(seed: int, stream: int) -> int:
    """Independent data orders for KEDMI's labelled and two unlabelled loaders."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _batches(kind: str, config, source, indices, prep) -> loop.Batches:
    """`batches(epoch, start_batch[, rows])`: a dict per D step with the arrays that kind
    needs (`rows`: this process's rows of each, in a multi-process run)."""
    streams = [
        loop.shuffled_batches(
            source,
            indices,
            config.batch_size,
            preprocess=prep,
            seed=_stream_seed(config.seed, s),
        )
        for s in range(3 if kind == 'kedmi' else 1)
    ]

    def batches(epoch: int, start_batch: int, rows: slice = slice(None)):
        for parts in zip(*(s(epoch, start_batch, rows) for s in streams), strict=True):
            batch = {'image': parts[0]['image']}
            if kind == 'kedmi':
                batch['unlabeled'], batch['unlabeled2'] = parts[1]['image'], parts[2]['image']
            if kind == 'plgmi':
                batch['label'] = parts[0]['label']
            yield batch

    return batches


def _variables(state: GanState) -> dict:
    return {
        'generator': {'params': state.g_params, **state.g_state},
        'discriminator': {'params': state.d_params, **state.d_state},
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the GAN prior `config.prior.kind` in `workdir`.

    Writes `config.json`, `metrics.jsonl` (+ TensorBoard), `checkpoints/`,
    `samples/step_{N}.png` and finally `prior/` (see `tldmi_jax.priors.save_prior`).

    Returns:
      A summary: steps, G steps, the prior directory and the last logged losses.

    Raises:
      ValueError: unknown prior kind; kedmi/plgmi without a target checkpoint (outside
        runlocal); a target whose class count differs from `config.prior.num_classes`.
    """
    kind = config.prior.kind
    priors.check_trainable(kind)
    metrics.quiet_libraries()
    workdir_lib.prepare(config, workdir)
    sharding.check_devices(config.get('devices', 0))
    target, target_vars, num_classes, target_path = load_target(config)
    dc = config.data
    source = data.get_source(
        dc.name,
        dc.get('split', 'public'),
        root=dc.root,
        data_dir=dc.data_dir,
        **dict(dc.get('kwargs') or {}),
    )
    prep = preprocess.get_preprocess(dc.name, dc.image_size)
    # Sizes the family cannot build fail here, before anything is written (no computation).
    priors.build_modules(
        kind, num_classes=num_classes, image_size=dc.image_size, **prior_options(config)
    )
    workdir_lib.save_config(config, workdir)  # The inputs are valid: the run starts here.
    indices = np.arange(len(source))
    if kind == 'plgmi':
        idx, labels = pseudo_labels(config, workdir, target_path, target, target_vars, source, prep)
        source, indices = Relabelled(source, idx, labels), np.arange(len(idx))

    prior = priors.make_prior(
        kind,
        num_classes=num_classes,
        image_size=dc.image_size,
        seed=config.seed,
        **prior_options(config),
    )
    g_tx, d_tx = gan_losses.adam(config.optim), gan_losses.adam(config.optim)
    state = initial_state(prior, g_tx, d_tx)
    sched = loop.schedule(config, len(indices), 'training images')
    train = loop.TrainLoop(
        workdir,
        sched,
        desc=f'gan/{kind}',
        log_every=config.get('log_every_steps') or 100,
        checkpoint_every=config.get('checkpoint_every_steps'),
        keep=config.get('keep_checkpoints', 2),
        params=lambda state: (state.g_params, state.d_params),
    )
    state = train.resume(state)
    n_critic = config.n_critic
    g_first = kind == 'plgmi'  # PLG-MI updates G at the start of each n_dis cycle.

    d_loss, g_loss = gan_losses.make_loss_fns(prior, config, target)
    d_step = jax.jit(make_d_step(d_loss, d_tx, config.seed), donate_argnums=0)
    g_step = jax.jit(make_g_step(g_loss, g_tx, config.seed), donate_argnums=0)
    n_samples = config.get('num_samples', 32)
    z_fixed = jax.random.normal(step_key(config.seed, 0, 2), (n_samples, prior.z_dim))
    y_fixed = jnp.arange(n_samples) % max(num_classes, 1)
    sample = jax.jit(lambda gv: prior.generate(gv, z_fixed, y_fixed))

    def save_samples(step: int, state: GanState) -> GanState:
        images = distributed.to_host(sample({'params': state.g_params, **state.g_state}))
        if distributed.is_main():
            grids.save_grid(os.path.join(workdir, 'samples', f'step_{step}.png'), images, ncol=8)
        return state

    mesh = sharding.data_mesh(config.batch_size, config.get('devices', 0))
    logging.info(
        'Data parallel over %d device(s) of %d process(es).', mesh.size, distributed.process_count()
    )
    target_vars = sharding.replicate(target_vars, mesh) if target_vars is not None else {}

    def gan_step(state: GanState, batch: dict, step: int):
        """One D step, and a G step every `n_critic` (before or after it)."""
        out = {}
        if g_first and step % n_critic == 0:
            state, out = g_step(state, batch, target_vars)
        state, m = d_step(state, batch, target_vars)
        out = {**out, **m}
        if not g_first and (step + 1) % n_critic == 0:
            state, m = g_step(state, batch, target_vars)
            out = {**out, **m}
        return state, out

    state = train.run(
        sharding.replicate(state, mesh),
        _batches(kind, config, source, indices, prep),
        gan_step,
        mesh,
        hooks=[loop.Periodic(config.get('sample_every_steps'), save_samples)],
    )

    prior = dataclasses.replace(prior, variables=distributed.to_host(_variables(state)))
    prior_dir = os.path.join(workdir, priors.PRIOR_DIR)
    if distributed.is_main():
        priors.save_prior(prior_dir, prior)
    distributed.barrier(f'save_prior:{prior_dir}')
    step, last = train.step, train.last
    g_steps = -(-step // n_critic) if g_first else step // n_critic
    if not last:  # Resumed at the last step: the killed run logged the last losses.
        logged = [r for r in metrics.read_metrics(workdir) if 'd/loss' in r]
        last = {k: v for k, v in logged[-1].items() if k != 'step'} if logged else {}
    summary = {'steps': step, 'g_steps': g_steps, 'prior_dir': prior_dir, **last}
    summary.pop('train/images_per_sec', None)
    train.finish(summary, record=False)  # Its losses are the last logged record.
    logging.info('Saved the %s prior to %s', kind, prior_dir)
    return summary
