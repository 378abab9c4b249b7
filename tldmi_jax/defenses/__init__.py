"""Defenses: options of the one classifier trainer, selected by `config.defense.name`.

`name` is one of `none | tldmi | mid | bido | negls | dpsgd` or a '+'-joined combination
(`tldmi+bido`, `tldmi+mid+negls`, ...):

* `tldmi` freezes the first layers (`transfer.py`; resolved by the trainer for any name
  containing it);
* `mid` wraps the model with a VIB head and adds `beta * KL` (`mid.py`);
* `bido` adds HSIC/COCO dependency terms over hidden layers (`bido.py`);
* `negls` trains on smoothed labels, negative with a warm-up or positive (`label_smoothing.py`);
* `dpsgd` replaces the gradient by the clipped, noised per-example mean and reports
  epsilon (`dpsgd.py`). BiDO's terms are batch statistics with no per-example form, so
  `bido+dpsgd` is rejected.

`wrap_model` applies the model change (MID) and `build` returns the `Objective` whose
`loss_and_grads` the trainer's step calls, for every name: plain softmax cross-entropy for
`none` and `tldmi` (`plain`), with the terms of the loss defenses added. The objective runs
the model under the freeze plan's BatchNorm policy (`transfer.bn_policy_interceptor`), the
one place where that policy is applied.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from tldmi_jax import models
from tldmi_jax.defenses import bido, dpsgd, label_smoothing, mid, transfer

NAMES = ('none', 'tldmi', 'mid', 'bido', 'negls', 'dpsgd')
_LOSS_DEFENSES = ('mid', 'bido', 'negls', 'dpsgd')


def parse(name: str | None) -> tuple[str, ...]:
    """Splits a defense name on '+' and checks it.

    Returns:
      The parts in the given order (`('none',)` for an empty name).

    Raises:
      ValueError: for an unknown or repeated part, `none` in a combination, or
        `bido+dpsgd`.
    """
    text = str(name or 'none').strip()
    parts = tuple(p.strip() for p in text.split('+'))
    unknown = [p for p in parts if p not in NAMES]
    if unknown:
        raise ValueError(
            f'Unknown defense {unknown[0]!r} in {text!r}; valid: {", ".join(NAMES)}, '
            "or a '+'-joined combination such as 'tldmi+bido'."
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f'Defense {text!r} repeats a part.')
    if 'none' in parts and len(parts) > 1:
        raise ValueError(f"Defense {text!r}: 'none' cannot be combined.")
    if 'bido' in parts and 'dpsgd' in parts:
        raise ValueError(
            'bido+dpsgd is not supported: the HSIC/COCO terms depend on the whole batch, '
            'so per-example clipping cannot bound one example.'
        )
    return parts


def added_groups(spec: ml_collections.ConfigDict | None) -> tuple[str, ...]:
    """Top-level parameter groups a defense adds to the model (MID: `vib`)."""
    names = parse(spec.get('name') if spec else None)
    return (mid.GROUP,) if 'mid' in names else ()


def wrap_model(model: nn.Module, spec: ml_collections.ConfigDict | None) -> nn.Module:
    """The model a defense trains (MID adds its VIB head); unchanged otherwise."""
    spec = spec or {}
    if 'mid' in parse(spec.get('name')):
        return mid.wrap(model, k=int(spec.get('mid_k', 0) or 0))
    return model


def wrap_for_checkpoint(model: nn.Module, params: Any) -> nn.Module:
    """Rebuilds the trained model's wrapping from its parameters (a VIB head -> MID)."""
    return mid.wrap_for_checkpoint(model, params)


@dataclasses.dataclass(frozen=True)
class Objective:
    """The loss and gradient of a classifier under its defense (see `build` and `plain`)."""

    model: nn.Module
    parts: tuple[str, ...]
    mask: Any  # Boolean tree like the params: True where trainable.
    interceptor: Callable[..., Any] | None  # The BatchNorm policy (None: nothing to change).
    # Only the loss defenses read the fields below.
    num_classes: int = 0
    steps_per_epoch: int = 1
    num_epochs: float = 1.0
    layers: tuple[str, ...] = ()
    pool: bool = False
    sample_rate: float = 1.0
    hp: dict[str, Any] = dataclasses.field(default_factory=dict)
    mesh: Any = None  # The 'data' mesh of the batch (DP-SGD's per-example gradients).

    def _alpha(self, step: jax.Array) -> jax.Array:
        return label_smoothing.alpha_at(
            step // self.steps_per_epoch,
            self.hp['ls_alpha'],
            start_epoch=self.hp['ls_start_epoch'],
            end_epoch=self.hp['ls_end_epoch'],
            num_epochs=self.num_epochs,
            original_ramp=self.hp['ls_original_ramp'],
        )

    def _per_example(self, logits, labels, inter, step):
        """Per-example loss terms [B] (CE, smoothed CE, beta * KL) and their metrics."""
        metrics = {}
        if 'negls' in self.parts:
            alpha = self._alpha(step)
            ce = label_smoothing.cross_entropy(logits, labels, alpha)
            metrics['train/ls_alpha'] = alpha
        else:
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        metrics['train/ce'] = ce.mean()
        loss = ce
        if 'mid' in self.parts:
            kl = mid.kl_divergence(*mid.statistics(inter))
            metrics['train/vib_kl'] = kl.mean()
            loss = loss + self.hp['mid_beta'] * kl
        return loss, metrics

    def _bido(self, images, labels, features, inter):
        """BiDO's batch term `sum_l lambda_x dep(X, Z_l) - lambda_y dep(Z_l, Y)`."""
        onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
        hiddens = bido.hidden_representations(inter, self.layers, features, self.pool)
        kw = dict(
            measure=self.hp['bido_measure'],
            sigma=self.hp['bido_sigma'],
            label_kernel=self.hp['bido_label_kernel'],
        )
        deps = [bido.dependencies(h, images, onehot, **kw) for h in hiddens]
        hx, hy = jnp.stack([d[0] for d in deps]), jnp.stack([d[1] for d in deps])
        term = self.hp['bido_lambda_x'] * hx.sum() - self.hp['bido_lambda_y'] * hy.sum()
        return term, {'train/hsic_xz': hx.mean(), 'train/hsic_yz': hy.mean()}

    def _capture(self):
        return bido.capture_filter(self.layers) if 'bido' in self.parts else False

    def _forward(self, params, batch_stats, images, rng):
        """The training forward pass under the freeze plan's BatchNorm policy."""

        def run():
            return self.model.apply(
                {'params': params, 'batch_stats': batch_stats},
                images,
                train=True,
                rngs={'dropout': rng},
                mutable=['batch_stats', 'intermediates'],
                capture_intermediates=self._capture(),
            )

        if self.interceptor is None:
            return run()
        with nn.intercept_methods(self.interceptor):
            return run()

    def loss_and_grads(self, params, batch_stats, images, labels, rng, step):
        """One step's loss, gradient and metrics.

        Args:
          params, batch_stats: the model's variables.
          images: [B, H, W, C] float32 (already augmented).
          labels: [B] int32.
          rng: PRNG key for dropout, the VIB sample and the DP noise.
          step: the (traced) global step, for schedules.

        Returns:
          `(loss, logits, new_batch_stats, grads, metrics)`.
        """
        if 'dpsgd' in self.parts:
            return self._private(params, batch_stats, images, labels, rng, step)

        def loss_fn(p):
            (features, logits), state = self._forward(p, batch_stats, images, rng)
            inter = state.get('intermediates', {})
            per_example, metrics = self._per_example(logits, labels, inter, step)
            loss = per_example.mean()
            if 'bido' in self.parts:
                term, more = self._bido(images, labels, features, inter)
                loss, metrics = loss + term, {**metrics, **more}
            return loss, (logits, state.get('batch_stats', batch_stats), metrics)

        (loss, (logits, new_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params
        )
        return loss, logits, new_stats, grads, metrics

    def _private(self, params, batch_stats, images, labels, rng, step):
        """DP-SGD: per-example gradients of the trainable leaves, clipped and noised."""
        flat = traverse_util.flatten_dict(params)
        flat_mask = traverse_util.flatten_dict(self.mask)
        trainable = {k: v for k, v in flat.items() if flat_mask[k]}
        frozen = {k: v for k, v in flat.items() if not flat_mask[k]}

        def one(train_p, image, label, key):
            p = traverse_util.unflatten_dict(
                {**frozen, **dict(zip(trainable, train_p, strict=True))}
            )
            (_, logits), state = dpsgd.apply_one(self.model, p, batch_stats, image, key)
            inter = state.get('intermediates', {})
            loss, metrics = self._per_example(logits, label[None], inter, step)
            return loss[0], (logits[0], loss[0], metrics)

        train_p = list(trainable.values())  # A list keeps the leaf order of `trainable`.
        dropout_key, noise_key = jax.random.split(rng)
        keys = jax.random.split(dropout_key, images.shape[0])
        per_ex, (logits, losses, metrics) = dpsgd.per_example_grads(
            one, train_p, images, labels, keys, mesh=self.mesh
        )
        private, dp_metrics = dpsgd.privatize(
            per_ex,
            clip_norm=self.hp['dp_clip_norm'],
            noise_multiplier=self.hp['dp_noise_multiplier'],
            key=noise_key,
        )
        grads = {k: jnp.zeros_like(v) for k, v in frozen.items()}
        grads.update(zip(trainable, private, strict=True))
        metrics = {k: v.mean() for k, v in metrics.items()}
        return (
            losses.mean(),
            logits,
            batch_stats,
            traverse_util.unflatten_dict(grads),
            {**metrics, **dp_metrics},
        )

    def host_metrics(self, step: int) -> dict[str, float]:
        """Metrics computed on the host at a log step (DP-SGD: epsilon at delta)."""
        if 'dpsgd' not in self.parts:
            return {}
        eps = dpsgd.epsilon(
            noise_multiplier=self.hp['dp_noise_multiplier'],
            sample_rate=self.sample_rate,
            steps=step,
            delta=self.hp['dp_delta'],
            accountant=self.hp['dp_accountant'],
        )
        return {
            'privacy/epsilon': eps if math.isfinite(eps) else 'inf',
            'privacy/delta': self.hp['dp_delta'],
            'privacy/sample_rate': self.sample_rate,
        }


# Every hyperparameter `build` reads from `config.defense`, with its type. The defaults live
# only in `config_lib.classifier_config`; a spec without one of these fields is an error.
_HYPERPARAMETERS = {
    'mid_beta': float,
    'bido_measure': str,
    'bido_lambda_x': float,
    'bido_lambda_y': float,
    'bido_sigma': float,
    'bido_label_kernel': str,
    'bido_layers': str,
    'ls_alpha': float,
    'ls_start_epoch': int,
    'ls_end_epoch': int,
    'ls_original_ramp': bool,
    'dp_clip_norm': float,
    'dp_noise_multiplier': float,
    'dp_delta': float,
    'dp_accountant': str,
}


def _hyperparameters(spec: ml_collections.ConfigDict) -> dict[str, Any]:
    """Reads every defense hyperparameter from `spec`, with no fallback defaults.

    Raises:
      ValueError: naming every missing (or unset) field.
    """
    missing = [field for field in _HYPERPARAMETERS if spec.get(field) is None]
    if missing:
        fields = ', '.join(f'config.defense.{field}' for field in missing)
        raise ValueError(
            f'Missing defense hyperparameters: {fields}. config_lib.classifier_config defines '
            'every one with its default; build the defense block from it.'
        )
    return {field: kind(spec[field]) for field, kind in _HYPERPARAMETERS.items()}


def build(
    spec: ml_collections.ConfigDict,
    model: nn.Module,
    params: Any,
    plan: transfer.FreezePlan,
    *,
    num_classes: int,
    train_size: int,
    batch_size: int,
    steps_per_epoch: int,
    total_steps: int,
    mesh: Any = None,
) -> Objective:
    """The training objective of `spec` for a (wrapped) model (`plain` for none/tldmi).

    Args:
      spec: `config.defense`, with every field of `config_lib.classifier_config`'s defense
        block (there are no defaults here).
      model: the model from `wrap_model`.
      params: its parameters (for BiDO's layer names).
      plan: the resolved freeze plan (trainable leaves, BatchNorm policy).
      num_classes: number of logits.
      train_size: N, the training examples (DP-SGD's sampling rate is batch_size / N).
      batch_size: examples per step.
      steps_per_epoch: steps per epoch (label-smoothing schedule).
      total_steps: the run's length (the original label-smoothing ramp).
      mesh: the 'data' mesh the training batch is sharded over (None: one device).

    Raises:
      ValueError: for a bad name or hyperparameter, a missing hyperparameter field (for a
        loss defense), or a loss defense with no trainable parameter.
    """
    parts = parse(spec.get('name'))
    if not any(p in _LOSS_DEFENSES for p in parts):
        return plain(model, plan, parts)
    if plan.trainable_params == 0:
        raise ValueError(
            f'defense {spec.get("name")!r} trains through its loss, but the freeze spec '
            f'({plan.source}) freezes all {plan.total_params:,} parameters; leave some '
            "trainable (e.g. end the rules with '.*:trainable', or set fine_tune_from)."
        )
    hp = _hyperparameters(spec)
    if 'mid' in parts and hp['mid_beta'] < 0:
        raise ValueError(f'defense.mid_beta must be >= 0, got {hp["mid_beta"]}.')
    if 'bido' in parts:
        bido.check(
            hp['bido_measure'],
            hp['bido_label_kernel'],
            hp['bido_sigma'],
            hp['bido_lambda_x'],
            hp['bido_lambda_y'],
        )
    if 'negls' in parts:
        label_smoothing.check(hp['ls_alpha'], hp['ls_start_epoch'], hp['ls_end_epoch'])
    if 'dpsgd' in parts:
        dpsgd.check(
            hp['dp_clip_norm'], hp['dp_noise_multiplier'], hp['dp_delta'], hp['dp_accountant']
        )
    layers = ()
    if 'bido' in parts:
        layers = bido.resolve_layers(model, params, hp['bido_layers'])
    return dataclasses.replace(
        plain(model, plan, parts),
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        num_epochs=total_steps / steps_per_epoch,
        layers=layers,
        pool=bido.pools_blocks(model),
        sample_rate=min(1.0, batch_size / max(train_size, 1)),
        hp=hp,
        mesh=mesh,
    )


def plain(
    model: nn.Module, plan: transfer.FreezePlan, parts: tuple[str, ...] = ('none',)
) -> Objective:
    """Softmax cross-entropy (`none`, `tldmi`) with the plan's trainable mask and BN policy."""
    return Objective(
        model=model,
        parts=parts,
        mask=transfer.trainable_mask(plan.labels),
        interceptor=transfer.bn_policy_interceptor(plan),
    )


def describe(config: ml_collections.ConfigDict) -> transfer.FreezePlan:
    """Resolves `config.defense` for `config.model` without computing anything.

    Parameters come from `jax.eval_shape(model.init, ...)`, so full-size models are free.
    """
    num_classes = config.model.get('num_classes') or 10
    model = models.get_model(config.model.arch, num_classes, **(config.model.get('kwargs') or {}))
    model = wrap_model(model, config.defense)  # MID adds its VIB head.
    size = config.data.image_size
    dummy = jax.ShapeDtypeStruct((1, size, size, config.data.get('channels', 3)), jax.numpy.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
    return transfer.resolve(
        model, variables['params'], variables.get('batch_stats', {}), config.defense
    )
