"""TL-DMI freezing: a freeze spec resolves to a label tree for `optax.multi_transform`.

A freeze spec (`config.defense`) takes exactly one of these forms:

* `fine_tune_from='stage4'`: a named cut point, where fine-tuning starts: `stage1`..`stageN`
  or `head` (one 1-based vocabulary on every architecture, see `tldmi_jax.models`), any
  `model.layer_groups` name, or an old name (`block2`, `layer3`, ...; deprecated, same
  meaning as before). That group and every later one are trainable.
* `freeze_layers=k`: the original code's per-architecture child index, translated onto
  group names by `model.official_frozen_groups(k, freeze_stem)` (VGG16: k=0 is a linear
  probe; IR models: k=0 freezes nothing; the IR stem stays trainable as the original's
  `requries_grad` typo leaves it unless `freeze_stem=True`).
* `theta_c=N`: a trainable-parameter budget: the longest suffix of groups whose size is
  at most N is trainable (the head always is).
* `rules='regex:label;regex:label'` (or a list of `(regex, label)` pairs): ordered rules
  over '/'-joined parameter paths, first match wins, labels `trainable` or `frozen`.
  Every parameter must match a rule and every rule must match a parameter.

With `defense.name` containing `tldmi` and no form given, the architecture's official
index (`OFFICIAL_FREEZE_LAYERS`) is used. Frozen leaves get `optax.set_to_zero()`: no
update, no weight decay, no optimizer state.

BatchNorm statistics of frozen groups follow `bn_policy`: `update` (the original: they
normalise with batch statistics and keep adapting to private data) or `freeze` (they
use and keep their running averages), applied with `bn_policy_interceptor`.
"""

import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from tldmi_jax import models
from tldmi_jax.models.layers import BatchNorm

TRAINABLE = 'trainable'
FROZEN = 'frozen'
BN_POLICIES = ('update', 'freeze')


@dataclasses.dataclass(frozen=True)
class GroupRow:
    """One row of the freeze table."""

    group: str
    params: int
    trainable: int


@dataclasses.dataclass(frozen=True)
class FreezePlan:
    """A resolved freeze spec.

    Attributes:
      labels: pytree like `params` with leaves 'trainable' or 'frozen'.
      rules: the ordered (regex, label) rules it came from.
      table: per-group parameter and trainable counts, in forward order.
      frozen_bn: '/'-joined module paths of BatchNorm layers whose parameters are frozen.
      bn_policy: 'update' or 'freeze'.
      source: a human-readable description of the spec.
    """

    labels: Any
    rules: tuple[tuple[str, str], ...]
    table: tuple[GroupRow, ...]
    frozen_bn: frozenset[str]
    bn_policy: str
    source: str

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.table)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable for r in self.table)


def _flat(tree: Any) -> dict[str, Any]:
    return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _size(leaf: Any) -> int:
    return int(np.prod(leaf.shape)) if hasattr(leaf, 'shape') else int(np.size(leaf))


def official_freeze_layers(model: nn.Module) -> int | None:
    """The released `freeze_layers` value of the model's architecture (None if none)."""
    value = getattr(model, 'OFFICIAL_FREEZE_LAYERS', None)
    if value is None:
        value = getattr(sys.modules[type(model).__module__], 'OFFICIAL_FREEZE_LAYERS', None)
    return value


def parse_rules(rules: str | Sequence[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """Parses `'regex:label;regex:label'` or a list of pairs into checked rules."""
    if isinstance(rules, str):
        pairs = []
        for part in rules.split(';'):
            part = part.strip()
            if not part:
                continue
            regex, sep, label = part.rpartition(':')
            if not sep:
                raise ValueError(f'Freeze rule {part!r} is not of the form regex:label.')
            pairs.append((regex.strip(), label.strip()))
    else:
        pairs = [tuple(p) for p in rules]
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f'Freeze rule {pair!r} must be a (regex, label) pair.')
        regex, label = pair
        if label not in (TRAINABLE, FROZEN):
            raise ValueError(f'Freeze rule {regex!r} has label {label!r}; use trainable|frozen.')
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f'Freeze rule regex {regex!r} does not compile: {e}.') from e
        out.append((regex, label))
    if not out:
        raise ValueError('No freeze rules given.')
    return tuple(out)


def _group_rules(model: nn.Module, frozen: Sequence[str]) -> tuple[tuple[str, str], ...]:
    names = [name for name, _ in model.layer_groups]
    unknown = sorted(set(frozen) - set(names))
    if unknown:
        raise ValueError(f'Unknown layer groups {unknown}; groups are {names}.')
    return tuple(
        (regex, FROZEN if name in frozen else TRAINABLE) for name, regex in model.layer_groups
    )


def _cut_index(model: nn.Module, cut: str) -> int:
    names = [name for name, _ in model.layer_groups]
    return names.index(models.cut_point_group(model, cut))


def _group_sizes(model: nn.Module, params: Any) -> list[int]:
    flat = _flat(params)
    sizes = []
    for _, regex in model.layer_groups:
        pattern = re.compile(regex)
        sizes.append(sum(_size(v) for k, v in flat.items() if pattern.fullmatch(k)))
    return sizes


def _budget_frozen(model: nn.Module, params: Any, budget: float) -> list[str]:
    names = [name for name, _ in model.layer_groups]
    sizes = _group_sizes(model, params)
    start = len(names) - 1  # the head is always trainable
    while start > 0 and sum(sizes[start - 1 :]) <= budget:
        start -= 1
    return names[:start]


def spec_rules(
    model: nn.Module, params: Any, spec: ml_collections.ConfigDict
) -> tuple[tuple[tuple[str, str], ...], str]:
    """Turns a freeze spec into ordered (regex, label) rules and a description."""
    name = str(spec.get('name', 'none') or 'none')
    fine_tune_from = spec.get('fine_tune_from', '') or ''
    freeze_layers = spec.get('freeze_layers', -1)
    freeze_layers = -1 if freeze_layers is None else int(freeze_layers)
    theta_c = float(spec.get('theta_c', 0) or 0)
    rules = spec.get('rules', '') or ''
    freeze_stem = bool(spec.get('freeze_stem', False))
    given = [
        form
        for form, present in (
            ('fine_tune_from', bool(fine_tune_from)),
            ('freeze_layers', freeze_layers >= 0),
            ('theta_c', theta_c > 0),
            ('rules', bool(rules)),
        )
        if present
    ]
    if len(given) > 1:
        raise ValueError(f'Give one freeze spec form, got {given}.')
    if not given and 'tldmi' in name.split('+'):
        official = official_freeze_layers(model)
        if official is None:
            raise ValueError(
                f'{type(model).__name__} has no official freeze_layers; set '
                'defense.fine_tune_from, defense.freeze_layers, defense.theta_c or defense.rules.'
            )
        freeze_layers, given = official, ['freeze_layers']
    if not given:
        return ((r'.*', TRAINABLE),), 'no freezing'
    form = given[0]
    if form == 'rules':
        return parse_rules(rules), f'rules {rules!r}'
    if form == 'freeze_layers':
        frozen = model.official_frozen_groups(freeze_layers, freeze_stem=freeze_stem)
        desc = f'freeze_layers={freeze_layers} (original semantics, freeze_stem={freeze_stem})'
    elif form == 'fine_tune_from':
        names = [n for n, _ in model.layer_groups]
        frozen = names[: _cut_index(model, fine_tune_from)]
        desc = f'fine_tune_from={fine_tune_from!r}'
    else:
        frozen = _budget_frozen(model, params, theta_c)
        desc = f'theta_c={theta_c:.0f}'
    return _group_rules(model, frozen), desc


def label_tree(params: Any, rules: Sequence[tuple[str, str]]) -> Any:
    """Labels every leaf of `params` by the first rule whose regex fully matches its path.

    Raises:
      ValueError: listing every parameter that matches no rule, or every rule that matches
        no parameter.
    """
    compiled = [(re.compile(regex), label) for regex, label in rules]
    used = [False] * len(compiled)
    unmatched = []

    def assign(path: tuple[str, ...], _: Any) -> str:
        name = '/'.join(path)
        for i, (pattern, label) in enumerate(compiled):
            if pattern.fullmatch(name):
                used[i] = True
                return label
        unmatched.append(name)
        return ''

    labels = traverse_util.path_aware_map(assign, params)
    if unmatched:
        raise ValueError(f'Parameters match no freeze rule: {unmatched}.')
    unused = [rules[i][0] for i, u in enumerate(used) if not u]
    if unused:
        raise ValueError(f'Freeze rules match no parameter: {unused}.')
    return labels


def _table(model: nn.Module, params: Any, labels: Any) -> tuple[GroupRow, ...]:
    flat, flat_labels = _flat(params), _flat(labels)
    rows, seen = [], set()
    for name, regex in getattr(model, 'layer_groups', ()):
        pattern = re.compile(regex)
        keys = [k for k in flat if pattern.fullmatch(k) and k not in seen]
        seen.update(keys)
        rows.append(
            GroupRow(
                name,
                sum(_size(flat[k]) for k in keys),
                sum(_size(flat[k]) for k in keys if flat_labels[k] == TRAINABLE),
            )
        )
    rest = [k for k in flat if k not in seen]
    if rest:
        rows.append(
            GroupRow(
                '(ungrouped)',
                sum(_size(flat[k]) for k in rest),
                sum(_size(flat[k]) for k in rest if flat_labels[k] == TRAINABLE),
            )
        )
    return tuple(rows)


def _frozen_bn_modules(labels: Any, batch_stats: Any) -> frozenset[str]:
    """BatchNorm module paths whose parameters are all frozen."""
    flat_labels = _flat(labels)
    modules = {k.rsplit('/', 1)[0] for k in _flat(batch_stats or {})}
    frozen = set()
    for module in modules:
        own = [v for k, v in flat_labels.items() if k.rsplit('/', 1)[0] == module]
        if own and all(v == FROZEN for v in own):
            frozen.add(module)
    return frozenset(frozen)


def resolve(
    model: nn.Module, params: Any, batch_stats: Any, spec: ml_collections.ConfigDict
) -> FreezePlan:
    """Resolves a freeze spec against a model's parameters (arrays or ShapeDtypeStructs)."""
    bn_policy = str(spec.get('bn_policy', 'update') or 'update')
    if bn_policy not in BN_POLICIES:
        raise ValueError(f'bn_policy must be one of {BN_POLICIES}, got {bn_policy!r}.')
    rules, source = spec_rules(model, params, spec)
    labels = label_tree(params, rules)
    return FreezePlan(
        labels=labels,
        rules=rules,
        table=_table(model, params, labels),
        frozen_bn=_frozen_bn_modules(labels, batch_stats),
        bn_policy=bn_policy,
        source=source,
    )


def make_optimizer(tx: optax.GradientTransformation, labels: Any) -> optax.GradientTransformation:
    """Applies `tx` to trainable leaves and zero updates (no state) to frozen ones."""
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def bn_policy_interceptor(plan: FreezePlan) -> Callable[..., Any] | None:
    """An `nn.intercept_methods` interceptor running frozen BatchNorms in inference mode.

    Returns None for the `update` policy (nothing to intercept).
    """
    if plan.bn_policy != 'freeze' or not plan.frozen_bn:
        return None
    frozen = plan.frozen_bn

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, BatchNorm) and context.method_name == '__call__':
            if '/'.join(module.scope.path) in frozen:
                if 'train' in kwargs:
                    kwargs = {**kwargs, 'train': False}
                elif len(args) >= 2:
                    args = (args[0], False, *args[2:])
        return next_fun(*args, **kwargs)

    return interceptor


def format_table(plan: FreezePlan) -> str:
    """A fixed-width text table of the plan (group, params, trainable)."""
    lines = [f'{"group":<16} {"params":>12} {"trainable":>12}']
    for row in plan.table:
        lines.append(f'{row.group:<16} {row.params:>12,d} {row.trainable:>12,d}')
    lines.append(f'{"total":<16} {plan.total_params:>12,d} {plan.trainable_params:>12,d}')
    return '\n'.join(lines)


def trainable_mask(labels: Any) -> Any:
    """Boolean pytree: True where the leaf is trainable."""
    return jax.tree.map(lambda label: label == TRAINABLE, labels)
