"""Knowledge distillation of LOMMA's augmented models from a target, on public data.

`train_and_evaluate(config, workdir)` distils each arch of `config.students` (LOMMA:
EfficientNet-B0/B1/B2) from the target classifier `config.target.checkpoint` on the public
split (labels unused), with LOMMA's recipe (`training_augmodel/celeba.json` and
`engine.train_augmodel`): loss KL(softmax(target / T) || softmax(student / T)) summed over
classes and averaged over the batch, at T = 1; SGD lr 0.01, momentum 0.9, weight decay
1e-4; StepLR(20 epochs, x0.5); 20 epochs of batch 64. The target runs in inference mode
inside the jitted step; students train in training mode (batch statistics, stochastic
depth). Unlike the original, the last partial batch of an epoch is dropped (one compiled
shape) and `data.holdout_fraction` of the public images is held out to measure agreement.

Workdir layout::

    config.json                   the resolved config
    target/                       runlocal only: the tiny target (`pipelines.runlocal`)
    student_{i}_{arch}/           one per student, in config order
      config.json                 model.arch / num_classes, data.image_size / channels
      checkpoints/                orbax CheckpointManager (resumable state)
      model_final/                the distilled model (`classifiers.load(dir)`)
      metrics.jsonl, tensorboard/ training curves and final metrics
      results.json                final metrics; its presence marks the student done
    metrics.jsonl                 per finished student: step = its index, `{name}/...` keys
    distill.json                  target and student metrics, protocol hash

Students are trained one after another. Rerunning the same command skips finished students
and resumes the unfinished one from its last checkpoint. The data order is a function of
`(seed, epoch)`, a student's init and stochastic depth of `(seed, student index, step)`, so
a killed and rerun distillation ends with the same parameters as an uninterrupted one.
"""

import dataclasses
import functools
import json
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from tldmi_jax import classifiers, config_lib, data, models
from tldmi_jax.data import pipeline, preprocess
from tldmi_jax.train import loop
from tldmi_jax.train import optim as optim_lib
from tldmi_jax.utils import atomic, checkpoint, distributed, metrics, sharding
from tldmi_jax.utils import workdir as workdir_lib


class StudentState(flax.struct.PyTreeNode):
    """Everything a resumed student needs (the data order is derived from `step`)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def kd_loss(
    student_logits: jax.Array,
    target_logits: jax.Array,
    temperature: float = 1.0,
    divide_by_t2: bool = False,
) -> jax.Array:
    """Batch mean of KL(softmax(target / T) || softmax(student / T)), scaled by T^2.

    Equals torch's `KLDivLoss(reduction='sum')(log_softmax(s / T), softmax(t / T)) / B`
    times `T^2` (Hinton et al.). LOMMA's code divides by `T^2` instead (`divide_by_t2`);
    both agree at its T = 1.

    Args:
      student_logits: [B, K].
      target_logits: [B, K]; treated as constants by the caller.
      temperature: softmax temperature T > 0.
      divide_by_t2: scale by 1 / T^2 as the original code does.

    Returns:
      Scalar loss.
    """
    t = jnp.asarray(temperature, jnp.float32)
    log_p = jax.nn.log_softmax(target_logits / t, axis=-1)
    log_q = jax.nn.log_softmax(student_logits / t, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    scale = 1.0 / (t * t) if divide_by_t2 else t * t
    return jnp.mean(kl) * scale


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """`optim.make_base_optimizer` with torch's StepLR as an optax schedule.

    Args:
      config: uses `config.optim` (`lr`, `decay_every_epochs`, `decay_factor`, and the
        fields `make_base_optimizer` reads).
      steps_per_epoch: optimizer steps per epoch; the lr is multiplied by `decay_factor`
        after every `decay_every_epochs * steps_per_epoch` steps.

    Returns:
      `(tx, schedule)`: the optax transformation and `schedule(step) -> lr`.
    """
    schedule = optax.exponential_decay(
        init_value=config.optim.lr,
        transition_steps=max(1, config.optim.decay_every_epochs * steps_per_epoch),
        decay_rate=config.optim.decay_factor,
        staircase=True,
    )
    # torch's SGD applies the lr after momentum, as optax.sgd does with a schedule.
    optim = ml_collections.ConfigDict(dict(config.optim.to_dict(), lr=schedule))
    return optim_lib.make_base_optimizer(optim), schedule


def make_train_step(student, target, tx, *, key: jax.Array, temperature: float, t2: bool):
    """Builds the pure step `(state, target_variables, batch) -> (state, metrics)`.

    Args:
      student: the student classifier (trained in training mode).
      target: the target classifier; its variables are an argument of the step (so one
        compiled step serves any target weights) and it runs in inference mode.
      tx: the optimizer of `state.opt_state`.
      key: base PRNG key; step `n` uses `fold_in(key, n)` for stochastic depth.
      temperature: KD temperature T.
      t2: divide the loss by T^2 (the original code) instead of multiplying.

    Returns:
      `step_fn(state, target_vars, {'image': [B, S, S, C]})` returning the new state and
      `train/kd_loss`, `train/agreement@1`, `train/grad_norm`.
    """

    def step_fn(state: StudentState, target_vars: Any, batch: dict[str, jax.Array]):
        images = batch['image']
        _, target_logits = target.apply(target_vars, images, train=False)
        target_logits = jax.lax.stop_gradient(target_logits)
        rng = jax.random.fold_in(key, state.step)

        def loss_fn(params):
            variables = {'params': params, 'batch_stats': state.batch_stats}
            (_, logits), updates = student.apply(
                variables, images, train=True, rngs={'dropout': rng}, mutable=['batch_stats']
            )
            loss = kd_loss(logits, target_logits, temperature, t2)
            return loss, (logits, updates['batch_stats'])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        agree = jnp.argmax(logits, -1) == jnp.argmax(target_logits, -1)
        out = {
            'train/kd_loss': loss,
            'train/agreement@1': jnp.mean(agree),
            'train/grad_norm': optax.tree.norm(grads),
        }
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, out

    return step_fn


def predict_logits(apply, variables: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits [N, K] over an array; `apply` is `classifiers.jit_apply(model)`."""
    return classifiers.predict(apply, variables, images, batch_size)[1]


def compare(student: np.ndarray, target: np.ndarray, labels: np.ndarray | None = None):
    """Top-1 agreement of two logit arrays [N, K], plus accuracy against `labels`."""
    pred = np.argmax(student, -1)
    res = {'agreement@1': float(np.mean(pred == np.argmax(target, -1)))}
    res['kl'] = float(kd_loss(jnp.asarray(student), jnp.asarray(target)))
    if labels is not None:
        top5 = np.argsort(-student, -1)[:, : min(5, student.shape[-1])]
        res['acc@1'] = float(np.mean(pred == labels))
        res['acc@5'] = float(np.mean(np.any(top5 == labels[:, None], -1)))
    return res


def _source(config, name: str, split: str, root):
    kwargs = dict(config.data.get('kwargs') or {})
    return data.get_source(name, split, root=root, data_dir=config.data.data_dir, **kwargs)


@dataclasses.dataclass
class DistillData:
    """The public training split, the held-out public images and the private test split."""

    public: data.Source  # Random access to the public split.
    prep: Any  # uint8 [H, W, C] -> float32 [S, S, C] in [0, 1].
    train_idx: np.ndarray  # int64 [N_train], public records used for distillation.
    holdout_idx: np.ndarray  # int64 [N_hold], public records held out for agreement.
    holdout: np.ndarray | None  # float32 [N_hold, S, S, C] (None if N_hold == 0).
    test_images: np.ndarray  # float32 [N_test, S, S, C], private test split.
    test_labels: np.ndarray  # int32 [N_test].
    num_classes: int  # Private class count of the dataset.
    holdout_target: np.ndarray | None = None  # Target logits [N_hold, K].
    test_target: np.ndarray | None = None  # Target logits [N_test, K].


def load_data(config: ml_collections.ConfigDict) -> DistillData:
    """Loads the public split (split into train/holdout) and the private test split."""
    dc = config.data
    public_name = dc.public_name or dc.name
    public = _source(config, public_name, 'public', dc.public_root or dc.root)
    test_src = _source(config, dc.name, 'private_test', dc.root)
    prep = preprocess.get_preprocess(public_name, dc.image_size)
    n = len(public) if not dc.max_public else min(len(public), dc.max_public)
    train_idx, hold_idx = pipeline.split_validation(n, dc.holdout_fraction, config.seed)
    holdout = pipeline.load_all(public, hold_idx, prep)['image'] if len(hold_idx) else None
    test_idx = np.arange(len(test_src) if not dc.max_test else min(len(test_src), dc.max_test))
    test = pipeline.load_all(test_src, test_idx, preprocess.get_preprocess(dc.name, dc.image_size))
    return DistillData(
        public=public,
        prep=prep,
        train_idx=train_idx,
        holdout_idx=hold_idx,
        holdout=holdout,
        test_images=test['image'],
        test_labels=test['label'],
        num_classes=test_src.num_classes,
    )


def _load_target(config: ml_collections.ConfigDict, num_classes: int):
    """Loads the target, checking it has `num_classes` logits."""
    path = config.target.checkpoint
    model, variables = classifiers.load(
        path, arch=config.target.arch or None, image_size=config.data.image_size
    )
    if model.num_classes != num_classes:
        raise ValueError(
            f'The target {path} has {model.num_classes} classes but the config expects '
            f'{num_classes} (config.model.num_classes or the private data).'
        )
    return path, model, variables


def init_student(config: ml_collections.ConfigDict, arch: str, num_classes: int, index: int):
    """Builds a student and its variables, pretrained from `config.init.checkpoints[arch]`."""
    model = models.get_model(arch, num_classes)
    size, channels = config.data.image_size, config.data.channels
    dummy = jnp.zeros((1, size, size, channels), jnp.float32)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 100), index)
    variables = jax.jit(functools.partial(model.init, train=False))(key, dummy)
    params, stats = variables['params'], variables.get('batch_stats', {})
    ckpt = (config.init.get('checkpoints') or {}).get(arch)
    if ckpt:
        loaded = checkpoint.load_model(ckpt)
        dont_load = tuple(config.init.dont_load)
        params = checkpoint.merge_params(loaded['params'], params, dont_load, 'params')
        stats = checkpoint.merge_params(loaded['batch_stats'], stats, dont_load, 'batch_stats')
        logging.info('%s initialised from %s (kept fresh: %s)', arch, ckpt, dont_load)
    return model, params, stats


def _check_config(config: ml_collections.ConfigDict) -> None:
    students = tuple(config.students)
    if not students:
        raise ValueError('config.students is empty.')
    for arch in students:
        if arch not in models.ARCHS:
            known = ', '.join(sorted(models.ARCHS))
            raise ValueError(f'Unknown student arch {arch!r}; known: {known}')
    path = config.target.checkpoint
    if not path:
        raise ValueError('config.target.checkpoint is required: the trained target to distil.')
    if not os.path.isdir(path):
        raise FileNotFoundError(f'Target checkpoint not found: {path}')
    given = {a for a, p in (config.init.get('checkpoints') or {}).items() if p}
    extra = given - set(students)
    if extra:
        raise ValueError(f'config.init.checkpoints names archs that are not students: {extra}')


def _train_student(config, index, arch, out_dir, target, target_vars, ds, target_path):
    """Distils student `index` into `out_dir` (resuming if possible); returns its metrics."""
    num_classes = target.num_classes
    saved = {
        'model': {'arch': arch, 'num_classes': num_classes, 'kwargs': {}},
        'data': {k: config.data[k] for k in ('name', 'image_size', 'channels')},
        'distill': {'index': index, 'target': target_path},
        'seed': config.seed,
    }
    if distributed.is_main():
        with open(os.path.join(out_dir, 'config.json'), 'w') as f:
            json.dump(saved, f, indent=2)
    model, params, stats = init_student(config, arch, num_classes, index)
    bs = config.batch_size
    sched = loop.schedule(config, len(ds.train_idx), 'public images')
    tx, schedule = make_optimizer(config, sched.steps_per_epoch)
    state = StudentState(
        step=jnp.asarray(0, jnp.int32), params=params, batch_stats=stats, opt_state=tx.init(params)
    )
    train = loop.TrainLoop(
        out_dir,
        sched,
        desc=os.path.basename(out_dir),
        log_every=config.log_every_steps or 50,
        checkpoint_every=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
    )
    state = train.resume(state)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 200), index)
    step_fn = make_train_step(
        model,
        target,
        tx,
        key=key,
        temperature=config.kd.temperature,
        t2=config.kd.divide_by_t2,
    )
    train_step = jax.jit(step_fn, donate_argnums=0)
    mesh = sharding.data_mesh(bs, config.get('devices', 0))
    state, target_vars = sharding.replicate((state, target_vars), mesh)
    state = train.run(
        state,
        loop.shuffled_batches(
            ds.public, ds.train_idx, bs, preprocess=ds.prep, seed=config.seed, keys=('image',)
        ),
        lambda state, batch, step: train_step(state, target_vars, batch),
        mesh,
        extras=lambda step: {'train/lr': float(schedule(step - 1))},
    )

    checkpoint.save_model(os.path.join(out_dir, 'model_final'), state.params, state.batch_stats)
    # Multi-process: each process predicts the whole split on its own device.
    variables = distributed.local_copy({'params': state.params, 'batch_stats': state.batch_stats})
    predict = classifiers.jit_apply(model)
    final = {'steps': train.step}
    if ds.holdout is not None:
        logits = predict_logits(predict, variables, ds.holdout, bs)
        res = compare(logits, ds.holdout_target)
        final.update({f'holdout/{k}': v for k, v in res.items()})
    logits = predict_logits(predict, variables, ds.test_images, bs)
    res = compare(logits, ds.test_target, ds.test_labels)
    final.update({f'test/{k}': v for k, v in res.items()})
    train.finish(final)
    return final


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Distils every student of `config.students` from the target (resuming).

    Args:
      config: see `configs/distill_celeba.py`.
      workdir: output directory (layout in the module docstring).

    Returns:
      The contents of `distill.json`: target metrics, then one entry per student with its
      directory and final metrics (`holdout/agreement@1`, `test/acc@1`, ...).

    Raises:
      ValueError: an unknown student arch, no target checkpoint, or a
        target whose class count differs from the config's.
      FileNotFoundError: the target checkpoint path does not exist.
    """
    _check_config(config)
    metrics.quiet_libraries()
    workdir_lib.prepare(config, workdir)
    sharding.check_devices(config.get('devices', 0))
    ds = load_data(config)
    if ds.test_images.shape[-1] != config.data.channels:
        raise ValueError(
            f'config.data.channels={config.data.channels} but the images have '
            f'{ds.test_images.shape[-1]} channels.'
        )
    workdir_lib.save_config(config, workdir)  # The data is valid: the run starts here.
    num_classes = config.model.num_classes or ds.num_classes
    target_path, target, target_vars = _load_target(config, num_classes)
    bs = config.batch_size
    predict = classifiers.jit_apply(target)
    ds.test_target = predict_logits(predict, target_vars, ds.test_images, bs)
    target_res = compare(ds.test_target, ds.test_target, ds.test_labels)
    # The splits, seeds and target the student metrics depend on.
    protocol = {'data': config.data.to_dict(), 'holdout': ds.holdout_idx.tolist()}
    protocol.update(seed=config.seed, target=target_path)
    summary: dict[str, Any] = {
        'target': {
            'checkpoint': target_path,
            'test/acc@1': target_res['acc@1'],
            'test/acc@5': target_res['acc@5'],
        },
        'protocol_hash': config_lib.protocol_hash(protocol),
        'students': [],
    }
    if ds.holdout is not None:
        ds.holdout_target = predict_logits(predict, target_vars, ds.holdout, bs)

    writer = metrics.MetricWriter(workdir)
    recorded = {k.split('/', 1)[0] for r in metrics.read_metrics(workdir) for k in r}
    for index, arch in enumerate(config.students):
        name = f'student_{index}_{arch}'
        out_dir = os.path.join(workdir, name)
        if distributed.is_main():
            os.makedirs(out_dir, exist_ok=True)
        distributed.barrier(f'distill:{out_dir}')
        done = os.path.join(out_dir, 'results.json')
        if os.path.exists(done):
            logging.info('%s is finished; skipping.', name)
            with open(done) as f:
                res = json.load(f)
        else:
            res = _train_student(config, index, arch, out_dir, target, target_vars, ds, target_path)
        if name not in recorded:
            writer.write(index, {f'{name}/{k}': v for k, v in res.items()})
        summary['students'].append({'name': name, 'arch': arch, 'dir': out_dir, **res})
    writer.close()
    if distributed.is_main():
        atomic.write_json(os.path.join(workdir, 'distill.json'), summary)
    distributed.barrier(f'distill:{workdir}:done')
    return summary
