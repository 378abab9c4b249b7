"""One classifier trainer for every defense: targets, evaluation models, pre-training.

`train_and_evaluate(config, workdir)` trains `config.model.arch` on the private split of
`config.data.name` with SGD (momentum, weight decay, constant learning rate as in the
original) or Adam, optionally with torch's MultiStepLR (`config.optim.milestones` in epochs,
`config.optim.gamma`; PPA's recipe), applies the freeze spec of `config.defense` (TL-DMI),
selects the best epoch on a validation split carved from the private training set (or on
the test split with `select_on='test'`, as the original code does), and reports natural
accuracy on the private test split. Rerunning the same command resumes from the last
checkpoint and ends with the same parameters as an uninterrupted run. The step's loss and
gradient come from the defense's objective (`tldmi_jax.defenses.build`: plain cross-entropy
for none/tldmi; MID, BiDO, label smoothing and DP-SGD, alone or with TL-DMI, change the
model and the loss or gradient); the loop, logging and checkpoints from
`tldmi_jax.train.loop`.

Training augmentation runs on device, per example, inside the jitted step, in PPA's order:
RandomResizedCrop (`config.data.random_resized_crop.scale`/`.ratio`, back to the input
size), ColorJitter (`config.data.color_jitter`: brightness, contrast, saturation, hue) and
the horizontal flip (`config.data.flip`); the first two are off by default.
"""

import functools
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from tldmi_jax import classifiers, data, defenses, models
from tldmi_jax.data import augment, pipeline, preprocess
from tldmi_jax.defenses import transfer
from tldmi_jax.train import loop, optim
from tldmi_jax.utils import checkpoint, distributed, metrics, sharding
from tldmi_jax.utils import workdir as workdir_lib


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs (the data order is derived from `step`)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    best_val: jax.Array
    best_step: jax.Array


def augmentation(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The crop and colour options of `make_train_step` from `config.data`, checked.

    Returns:
      `{'crop_scale': (lo, hi) or None, 'crop_ratio': (lo, hi), 'color_jitter': (b, c, s, h)
      or None}`; None is off (an empty `random_resized_crop.scale` or `color_jitter`).

    Raises:
      ValueError: a range that is not `(low, high)` with `0 < low <= high`, a jitter that is
        not four strengths (>= 0, hue <= 0.5), or colour jitter on images without 3 channels.
    """
    rrc = data_config.get('random_resized_crop') or {}
    scale, ratio = tuple(rrc.get('scale') or ()), tuple(rrc.get('ratio') or (1.0, 1.0))
    for name, pair in (('scale', scale), ('ratio', ratio)):
        if pair and not (len(pair) == 2 and 0 < pair[0] <= pair[1]):
            raise ValueError(
                f'config.data.random_resized_crop.{name}={pair}: must be (low, high) with '
                '0 < low <= high, or () for no crop'
            )
    jitter = tuple(data_config.get('color_jitter') or ())
    if jitter:
        if len(jitter) != 4:
            raise ValueError(
                f'config.data.color_jitter={jitter}: must be (brightness, contrast, saturation, '
                'hue), or () for none'
            )
        try:
            augment.jitter_params(jax.random.key(0), *jitter)
        except ValueError as e:
            raise ValueError(f'config.data.color_jitter={jitter}: {e}') from e
        if data_config.get('channels', 3) != 3:
            raise ValueError(
                f'config.data.color_jitter needs RGB images; config.data.channels='
                f'{data_config.channels}'
            )
    return {
        'crop_scale': tuple(float(x) for x in scale) or None,
        'crop_ratio': tuple(float(x) for x in ratio),
        'color_jitter': tuple(float(x) for x in jitter) or None,
    }


def _augment_batch(key, images, crop_scale, crop_ratio, color_jitter):
    """Per-example RandomResizedCrop (to the input size) then ColorJitter of [B, H, W, C]."""
    size = images.shape[1]

    def one(k, image):
        k_crop, k_jitter = jax.random.split(k)
        if crop_scale is not None:
            image = augment.random_resized_crop(k_crop, image, size, crop_scale, crop_ratio)
        if color_jitter is not None:
            image = augment.color_jitter(k_jitter, image, *color_jitter)
        return image

    return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)


def make_train_step(
    model,
    tx,
    plan: transfer.FreezePlan,
    *,
    seed: int,
    flip: bool,
    objective=None,
    crop_scale: tuple[float, float] | None = None,
    crop_ratio: tuple[float, float] = (1.0, 1.0),
    color_jitter: tuple[float, float, float, float] | None = None,
):
    """Builds the pure train step `(state, batch) -> (state, metrics)`.

    `objective` (from `defenses.build`) supplies the loss and gradient; None trains with
    plain cross-entropy under `plan` (`defenses.plain`). Before it, each example gets (in
    PPA's order) a RandomResizedCrop of scale `crop_scale` and aspect ratios `crop_ratio`
    resized back to the input size, a ColorJitter of strengths `color_jitter` (brightness,
    contrast, saturation, hue) and, with `flip`, a random horizontal flip; None is off
    (`augmentation(config.data)` gives these options). Inputs are square.
    """
    if objective is None:
        objective = defenses.plain(model, plan)
    base_key = jax.random.fold_in(jax.random.key(seed), 1)

    def step_fn(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(base_key, state.step)
        flip_key, dropout_key = jax.random.split(key)
        images = batch['image']
        if crop_scale is not None or color_jitter is not None:
            # A stream of its own: the flip and dropout keys are those of a run without.
            aug_key = jax.random.fold_in(key, 2)
            images = _augment_batch(aug_key, images, crop_scale, crop_ratio, color_jitter)
        if flip:
            images = preprocess.random_flip(flip_key, images)
        loss, logits, batch_stats, grads, extra = objective.loss_and_grads(
            state.params, state.batch_stats, images, batch['label'], dropout_key, state.step
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        trainable = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, objective.mask)
        out = {
            'train/loss': loss,
            'train/acc@1': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
            'train/grad_norm': optax.tree.norm(trainable),
            **extra,
        }
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, out

    return step_fn


def _load_data(config: ml_collections.ConfigDict):
    dc = config.data
    kwargs = dict(dc.get('kwargs', {}) or {})
    train_split = dc.get('train_split', 'private_train')
    test_split = dc.get('test_split', 'private_test')
    train_src = data.get_source(dc.name, train_split, root=dc.root, data_dir=dc.data_dir, **kwargs)
    test_src = data.get_source(dc.name, test_split, root=dc.root, data_dir=dc.data_dir, **kwargs)
    prep = preprocess.get_preprocess(dc.get('preprocess') or dc.name, dc.image_size)
    n = len(train_src)
    select_on = config.get('select_on', 'val')
    if select_on not in ('val', 'test'):
        raise ValueError(f"select_on must be 'val' or 'test', got {select_on!r}.")
    max_train = int(dc.get('max_train', 0) or 0)
    all_idx = np.arange(n if not max_train else min(n, max_train))
    if select_on == 'val' and dc.val_fraction > 0:
        labels = getattr(train_src, 'labels', None)
        train_idx, val_idx = pipeline.split_validation(
            len(all_idx),
            dc.val_fraction,
            config.seed,
            labels=None if labels is None else np.asarray(labels)[all_idx],
        )
        train_idx, val_idx = all_idx[train_idx], all_idx[val_idx]
        if not len(val_idx):
            raise ValueError(
                f'data.val_fraction={dc.val_fraction} of {len(all_idx)} training images '
                'leaves no validation image; use more data, a larger fraction, or '
                '--config.data.val_fraction=0 (no model selection)'
            )
        val = _as_arrays(pipeline.load_all(train_src, val_idx, prep))
    else:
        train_idx, val = all_idx, None
    max_test = int(dc.get('max_test', 0) or 0)
    test_idx = np.arange(len(test_src) if not max_test else min(len(test_src), max_test))
    test = _as_arrays(pipeline.load_all(test_src, test_idx, prep))
    if select_on == 'test':
        val = test
    return train_src, train_idx, prep, val, test


def _as_arrays(batch) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(batch['image'], np.float32), np.asarray(batch['label'], np.int32)


def init_model(config: ml_collections.ConfigDict, num_classes: int, channels: int):
    """Builds the model and its (optionally pretrained) variables."""
    model = models.get_model(config.model.arch, num_classes, **(config.model.get('kwargs') or {}))
    model = defenses.wrap_model(model, config.get('defense'))
    size = config.data.image_size
    dummy = jnp.zeros((1, size, size, channels), jnp.float32)
    try:
        variables = jax.jit(functools.partial(model.init, train=False))(
            jax.random.fold_in(jax.random.key(config.seed), 0), dummy
        )
    except ZeroDivisionError as e:  # A layer's input shrank to nothing: a zero-sized fan-in.
        raise ValueError(
            f'config.data.image_size={size} is too small for {config.model.arch}: its '
            f'downsampling leaves no pixels (it is used at '
            f'{models.default_image_size(config.model.arch)} px).'
        ) from e
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    ckpt = config.init.get('checkpoint')
    if ckpt:
        loaded = checkpoint.load_model(ckpt)
        dont_load = tuple(config.init.get('dont_load') or ())
        added = defenses.added_groups(config.get('defense'))
        # A defense's own layers (MID's `vib`) start fresh when the checkpoint lacks them.
        dont_load += tuple(f'{g}/.*' for g in added if g not in loaded['params'])
        params = checkpoint.merge_params(loaded['params'], params, dont_load, 'params')
        batch_stats = checkpoint.merge_params(
            loaded['batch_stats'], batch_stats, dont_load, 'batch_stats'
        )
        logging.info('Initialised from %s (kept fresh: %s)', ckpt, dont_load)
    return model, params, batch_stats


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) a classifier in `workdir`; returns the final summary metrics.

    Every input (data, model, init checkpoint, freeze spec, defense, devices) is checked
    before anything is written to `workdir`.
    """
    metrics.quiet_libraries()
    workdir_lib.prepare(config, workdir)
    sharding.check_devices(config.get('devices', 0))
    train_src, train_idx, prep, val, test = _load_data(config)
    num_classes = config.model.get('num_classes') or train_src.num_classes
    if num_classes < train_src.num_classes:
        raise ValueError(
            f'config.model.num_classes={num_classes} but {config.data.name} has '
            f'{train_src.num_classes} classes (labels 0..{train_src.num_classes - 1}); set it '
            'to at least that, or 0 to take it from the data'
        )
    channels = config.data.get('channels', 3)
    if test[0].shape[-1] != channels:
        raise ValueError(
            f'config.data.channels={channels} but {config.data.name} images have '
            f'{test[0].shape[-1]} channels.'
        )
    model, params, batch_stats = init_model(config, num_classes, channels)

    plan = transfer.resolve(model, params, batch_stats, config.defense)
    logging.info('Freeze plan: %s\n%s', plan.source, transfer.format_table(plan))
    bs = config.batch_size
    sched = loop.schedule(config, len(train_idx), 'training images')
    lr = optim.learning_rate(config.optim, sched.steps_per_epoch)
    base_tx = optim.make_base_optimizer(
        ml_collections.ConfigDict(dict(config.optim.to_dict(), lr=lr))
    )
    tx = transfer.make_optimizer(base_tx, plan.labels)
    augment_options = augmentation(config.data)
    mesh = sharding.data_mesh(bs, config.get('devices', 0))
    objective = defenses.build(
        config.defense,
        model,
        params,
        plan,
        num_classes=num_classes,
        train_size=len(train_idx),
        batch_size=bs,
        steps_per_epoch=sched.steps_per_epoch,
        total_steps=sched.total_steps,
        mesh=mesh,
    )
    workdir_lib.save_config(config, workdir)  # The inputs are valid: the run starts here.
    state = TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        best_val=jnp.asarray(-1.0, jnp.float32),
        best_step=jnp.asarray(-1, jnp.int32),
    )
    train = loop.TrainLoop(
        workdir,
        sched,
        desc='train',
        log_every=config.get('log_every_steps') or 50,
        checkpoint_every=config.get('checkpoint_every_steps'),
        keep=config.get('keep_checkpoints', 2),
    )
    state = train.resume(state)
    if train.step == 0:  # Once per run; a resumed run keeps the first record.
        sizes = {'params/total': plan.total_params, 'params/trainable': plan.trainable_params}
        train.writer.write(0, sizes)
    train_step = jax.jit(
        make_train_step(
            model,
            tx,
            plan,
            seed=config.seed,
            flip=config.data.flip,
            objective=objective,
            **augment_options,
        ),
        donate_argnums=0,
    )
    apply = classifiers.jit_apply(model)

    def evaluate(params, batch_stats, images, labels):
        # Multi-process: each process evaluates the whole split on its own device.
        variables = distributed.local_copy({'params': params, 'batch_stats': batch_stats})
        return classifiers.evaluate(apply, variables, images, labels, bs)

    def select(step: int, state: TrainState) -> TrainState:
        """Evaluates on the selection split; exports `model_best` when it improves."""
        res = evaluate(state.params, state.batch_stats, *val)
        split = 'test' if config.get('select_on', 'val') == 'test' else 'val'
        train.writer.write(step, {f'{split}/{k}': v for k, v in res.items()})
        if res['acc@1'] > float(state.best_val):
            train.check_finite(step, state.params)
            # Placed like the rest of the state: an unplaced scalar would retrace the step.
            best = (jnp.asarray(res['acc@1'], jnp.float32), jnp.asarray(step, jnp.int32))
            best_val, best_step = sharding.replicate(best, mesh)
            state = state.replace(best_val=best_val, best_step=best_step)
            checkpoint.save_model(
                os.path.join(workdir, 'model_best'), state.params, state.batch_stats
            )
        return state

    logging.info(
        'Data parallel over %d device(s) of %d process(es).', mesh.size, distributed.process_count()
    )
    state = train.run(
        sharding.replicate(state, mesh),
        loop.shuffled_batches(train_src, train_idx, bs, preprocess=prep, seed=config.seed),
        lambda state, batch, step: train_step(state, batch),
        mesh,
        hooks=[] if val is None else [loop.Periodic(config.get('eval_every_steps'), select)],
        # The lr of the last step before the log (`step` counts the steps taken).
        extras=lambda step: {'train/lr': optim.lr_at(lr, step - 1), **objective.host_metrics(step)},
    )

    checkpoint.save_model(os.path.join(workdir, 'model_final'), state.params, state.batch_stats)
    if val is not None and int(state.best_step) >= 0:
        best = checkpoint.load_model(os.path.join(workdir, 'model_best'))
        # On the mesh like the evaluated state, so `evaluate` is not traced again.
        sel_params, sel_stats = sharding.replicate((best['params'], best['batch_stats']), mesh)
    else:
        sel_params, sel_stats = state.params, state.batch_stats
    res = evaluate(sel_params, sel_stats, *test)
    final = {
        'target/natural_acc': res['acc@1'],
        'target/natural_acc@5': res['acc@5'],
        'params/total': plan.total_params,
        'params/trainable': plan.trainable_params,
        'best_step': int(state.best_step),
        'steps': train.step,
        **objective.host_metrics(train.step),
    }
    train.finish(final)
    return final
