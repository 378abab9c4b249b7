"""The allowed range of every numeric config field, checked before a stage writes anything.

`workdir.prepare` calls `check(config)` first, so a value out of range stops every launcher
with one line that names the field and its range, e.g.

    config.attack.lr=nan: must be a finite number > 0

The ranges live in two tables: `TOP` for the fields of a stage config's top level and
`BLOCKS` for the fields of its blocks (`optim`, `attack`, `defense`, ...). A field is looked
up by its last two names, so the same tables cover the stage configs nested in a sweep or a
demo config (`stages.attack.gmi.attack.steps` is an `attack.steps`, `stages.pretrain.seed`
a top-level `seed`): a block's own entry wins, then the top-level one. Fields that no table
names are not range-checked, but NaN and inf are refused in every float field (also inside
tuples and lists). None is allowed everywhere: an unset placeholder means the default that
`config_lib` holds for it (e.g. `ATTACK_DEFAULTS`).
"""

import dataclasses
import math
import numbers
from collections.abc import Iterator
from typing import Any

import ml_collections


class ConfigValueError(ValueError):
    """A config field holds a value outside its range (the message names both)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers in [low, high] (open ends where `low_open`/`high_open`), or one of `values`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    values: tuple[float, ...] = ()  # Also allowed, outside [low, high].
    text: str = ''  # Overrides the generated description.

    def allows(self, value: float) -> bool:
        if value in self.values:
            return True
        if self.values and self.low is None and self.high is None:
            return False  # Only the listed values.
        if self.integer and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.text:
            return self.text
        kind = 'an integer' if self.integer else 'a finite number'
        if self.low is not None and self.high is not None:
            left, right = '(' if self.low_open else '[', ')' if self.high_open else ']'
            return f'{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}'
        if self.low is not None:
            return f'{kind} {">" if self.low_open else ">="} {_num(self.low)}'
        if self.high is not None:
            return f'{kind} {"<" if self.high_open else "<="} {_num(self.high)}'
        return kind


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def ints(low: int) -> Range:
    """An integer >= low."""
    return Range(low=low, integer=True)


POSITIVE = Range(low=0, low_open=True)  # A finite number > 0.
NON_NEGATIVE = Range(low=0)  # A finite number >= 0.
FINITE = Range()  # Any finite number.
FRACTION = Range(low=0, high=1, high_open=True)  # [0, 1).
CHANNELS = Range(values=(1, 3), text='1 or 3')

# Fields at the top level of a stage config (and of the stage configs a sweep/demo nests).
TOP: dict[str, Range] = {
    'seed': ints(0),
    'batch_size': ints(1),
    'epochs': ints(0),  # 0 only with total_steps > 0 (`_check_length`).
    'total_steps': ints(0),
    'n_critic': ints(1),
    'checkpoint_every_steps': ints(0),
    'log_every_steps': ints(0),
    'eval_every_steps': ints(0),
    'sample_every_steps': ints(0),
    'keep_checkpoints': ints(1),
    'devices': ints(0),
    'num_samples': ints(1),
    'gp_weight': NON_NEGATIVE,
    'port': Range(low=0, high=65535, integer=True),
}

# Fields of the blocks of a stage config, by block name.
BLOCKS: dict[str, dict[str, Range]] = {
    'optim': {
        'lr': POSITIVE,
        'momentum': FRACTION,
        'weight_decay': NON_NEGATIVE,
        'b1': FRACTION,
        'b2': FRACTION,
        'decay_every_epochs': ints(1),
        'decay_factor': POSITIVE,
        'gamma': POSITIVE,
    },
    'attack': {
        'steps': ints(1),
        'lr': POSITIVE,
        'lam': NON_NEGATIVE,
        'num_seeds': ints(1),
        'samples': ints(1),
        'clip': POSITIVE,
        'reg_weight': NON_NEGATIVE,
        'p_reg_samples': ints(1),
        'reference_batch': ints(1),
        'init_log_var': FINITE,
        'b1': FRACTION,
        'b2': FRACTION,
        'final': ints(1),
        'candidates': ints(1),
        'psi': FINITE,
        'cutoff': ints(0),
        'crop': ints(0),
        'candidate_batch': ints(1),
        'select_views': ints(1),
        'select_batch': ints(1),
        'seed_chunk': ints(0),
    },
    'identities': {'first': ints(0), 'count': ints(1), 'batch_size': ints(1)},
    'defense': {
        'freeze_layers': Range(
            low=0,
            integer=True,
            values=(-1,),
            text="-1 (the architecture's official index) or an integer >= 0",
        ),
        'theta_c': NON_NEGATIVE,
        'mid_beta': NON_NEGATIVE,
        'mid_k': ints(0),
        'bido_lambda_x': NON_NEGATIVE,
        'bido_lambda_y': NON_NEGATIVE,
        'bido_sigma': POSITIVE,
        'ls_alpha': FINITE,
        'ls_start_epoch': ints(0),
        'ls_end_epoch': ints(0),
        'dp_clip_norm': POSITIVE,
        'dp_noise_multiplier': NON_NEGATIVE,
        'dp_delta': Range(low=0, high=1, low_open=True, high_open=True),
    },
    'data': {
        'image_size': ints(1),
        'channels': CHANNELS,
        'val_fraction': FRACTION,
        'holdout_fraction': FRACTION,
        'max_train': ints(0),
        'max_test': ints(0),
        'max_public': ints(0),
    },
    'model': {'num_classes': ints(0)},
    'prior': {
        'num_classes': ints(0),
        'z_dim': ints(1),
        'g_dim': ints(1),
        'd_dim': ints(1),
        'channels': CHANNELS,
        'mbd_features': ints(1),
        'mbd_kernel_dims': ints(1),
        'bottom_width': ints(1),
    },
    # Input models of the attack, evaluation and Fisher stages (0: from the checkpoint).
    'target': {'num_classes': ints(0), 'image_size': ints(0), 'runlocal_steps': ints(1)},
    'eval_model': {'num_classes': ints(0), 'image_size': ints(0)},
    'knn': {'chunk_size': ints(1)},
    'fid': {
        'batch_size': ints(1),
        'max_real': ints(0),
        'kid_subsets': ints(1),
        'kid_subset_size': ints(1),
        'prdc_k': ints(1),
    },
    'fisher': {'chunk_size': ints(1), 'max_examples': ints(0)},
    'kd': {'temperature': POSITIVE},
    'kedmi': {'unlabeled_weight': NON_NEGATIVE, 'entropy_weight': NON_NEGATIVE},
    'plgmi': {'alpha': NON_NEGATIVE, 'top_n': ints(1)},
    'report': {'max_pairs': ints(0), 'pairs_per_row': ints(1), 'real_per_class': ints(1)},
    'study': {
        'references_per_trial': ints(1),
        'seeds_per_identity': ints(1),
        'identities': ints(0),
        'attention_rate': Range(low=0, high=1),
        'min_attention': Range(low=0, high=1),
        'reference_size': ints(0),
        'display_size': Range(low=32, high=1024, integer=True),
    },
}


def rule(path: tuple[str, ...]) -> Range | None:
    """The range of the field at `path` (its block's entry, else the top-level one)."""
    if len(path) >= 2 and path[-1] in BLOCKS.get(path[-2], {}):
        return BLOCKS[path[-2]][path[-1]]
    return TOP.get(path[-1])


def problems(config: ml_collections.ConfigDict | dict) -> list[str]:
    """Every field outside its range, as `'config.a.b=value: must be ...'` (sorted by field)."""
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    found = []
    for path, value in _leaves(tree):
        found += _check_value(path, value)
    found += _check_length(tree)
    return found


def check(config: ml_collections.ConfigDict | dict) -> None:
    """Raises ConfigValueError naming the first field outside its range (and how many more).

    Raises:
      ConfigValueError: e.g. `config.attack.lr=nan: must be a finite number > 0`.
    """
    found = problems(config)
    if found:
        more = f' (and {len(found) - 1} more: {"; ".join(found[1:4])})' if len(found) > 1 else ''
        raise ConfigValueError(found[0] + more)


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield from _leaves(tree[key], (*path, str(key)))
    elif path:
        yield path, tree


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_value(path: tuple[str, ...], value: Any) -> list[str]:
    name = 'config.' + '.'.join(path)
    if isinstance(value, list | tuple):
        bad = [v for v in value if _is_number(v) and not math.isfinite(v)]
        return [f'{name}={list(value)}: every entry must be a finite number'] if bad else []
    if not _is_number(value):
        return []
    found = rule(path)
    if not math.isfinite(value):
        return [f'{name}={value}: must be {found.describe() if found else "a finite number"}']
    if found is not None and not found.allows(value):
        return [f'{name}={value}: must be {found.describe()}']
    return []


def _check_length(tree: Any, path: tuple[str, ...] = ()) -> list[str]:
    """`epochs` and `total_steps` side by side: one of them must give the run a step."""
    if not isinstance(tree, dict):
        return []
    found = []
    epochs, total = tree.get('epochs'), tree.get('total_steps')
    if _is_number(epochs) and _is_number(total) and epochs == 0 and total == 0:
        name = 'config.' + '.'.join((*path, 'epochs'))
        found.append(f'{name}=0: must be an integer >= 1 when total_steps is 0')
    for key in sorted(tree, key=str):
        found += _check_length(tree[key], (*path, str(key)))
    return found
