"""The workdir guard: a stage never silently overwrites a run with a different config.

Every stage entry point (`classifier.train_and_evaluate`, `gan.train_and_evaluate`,
`distill.train_and_evaluate`, `attacks.runner.run`, `evaluation.evaluate.evaluate`,
`analysis.fisher.analyze`, `pipelines.sweep.run`) calls

    workdir.prepare(config, path)      # first: nothing is written before this check
    ...                                # load and validate the inputs
    workdir.save_config(config, path)  # then record the resolved config (atomically)

`prepare` checks that the workdir can be written to and compares the `config.json` a
previous run left there with the new config (both as JSON, so tuples and lists, or unset
placeholders and nulls, compare equal; the `overwrite` field itself is ignored). The same
config resumes. A different one is refused with an error that lists the differing fields,
unless `config.overwrite` is True: then the previous run's files are deleted (logged) and
the stage starts afresh. A workdir without `config.json` is used as it is, so overwrite
never deletes a directory that no run of this library wrote.

Fields that a `runlocal` run fills in itself (an unset `target.checkpoint` that becomes
the tiny target it trained under the workdir) are not differences: the rerun of the same
command leaves them unset again.
"""

import json
import os
import re
import shutil
import tempfile
from typing import Any

import ml_collections
from absl import logging

from tldmi_jax import config_lib
from tldmi_jax.utils import atomic

CONFIG_FILE = 'config.json'
IGNORED = ('overwrite',)  # Top-level fields that never count as a difference.
MAX_LISTED = 10
# Every top-level name a stage, the sweep or the demo writes into its workdir (a test runs
# each launcher and checks its workdir against this list). `overwrite` deletes only these;
# a workdir that also holds anything else (a user's notes) is refused, nothing deleted.
OUTPUT_NAMES = (
    r'config\.json|metrics\.jsonl|metrics\.json|results\.(json|csv|md)|tensorboard',
    r'checkpoints|model_(best|final)|samples|priors?|pseudo_labels\.npz|targets?',
    r'student_\d+_\w+|distill\.json|augmented|batches|grids|reconstructions\.npz',
    r'attack\.json|p_reg\.npy|attack|eval|feature_cache|per_identity\.csv|groups\.csv',
    r'pairs\.png|report\.(md|html)|fisher(\.(json|png|csv))?|cells|cell\.json|eval_model',
    r'pretrain|sweep|summary\.json|timings\.json|runlocal|runlocal_data',
    r'utility_privacy\.png|events\.out\.tfevents\..*',
)
# Temporary names of the atomic writers (`utils.atomic`), the writability probe and the lock.
_TEMPORARY = r'(\..*\.tmp(\.\w+)?|\.write_test\..*|\.lock|\.tldmi_jax.*)'
_OWN = re.compile(rf'({"|".join(OUTPUT_NAMES)})(\.partial|\.new|\.old)?|{_TEMPORARY}')


class WorkdirError(ValueError):
    """The workdir cannot be used: not writable, or it holds a run with another config."""


def prepare(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Checks `workdir` before a stage writes anything to it.

    Args:
      config: the stage's config (as given; `config.overwrite` allows replacing a run).
      workdir: the stage's output directory (not created here).

    Raises:
      WorkdirError: the workdir is not a writable directory, or it holds a run whose
        config differs (the message lists the fields, old -> new) and overwrite is off.
    """
    check_writable(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    overwrite = bool(config.get('overwrite', False))
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError) as e:
        if not overwrite:
            raise WorkdirError(
                f'{path} is unreadable ({e}); choose another --workdir or pass '
                '--config.overwrite=True to replace that run'
            ) from e
        previous, changes = None, ['config.json unreadable']
    else:
        changes = differences(previous, as_json(config), workdir)
    if not changes:
        return
    if not overwrite:
        raise WorkdirError(
            f'{workdir} holds a run with a different config ({format_changes(changes)}); '
            'rerun with the same config to resume, choose another --workdir, or pass '
            '--config.overwrite=True to delete that run and start afresh'
        )
    logging.warning(
        'overwrite=True: deleting the previous run in %s (its config differs: %s)',
        workdir,
        format_changes(changes),
    )
    clear(workdir)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config to `workdir/config.json` atomically."""
    atomic.write_text(os.path.join(workdir, CONFIG_FILE), config_lib.config_to_json(config))


def check_writable(workdir: str) -> None:
    """Checks that `workdir` (or, while it does not exist, its nearest parent) is writable.

    Nothing is created: a file is written and removed again in the nearest existing
    directory, so a run that then fails on its inputs leaves no workdir behind.

    Raises:
      WorkdirError: naming the workdir and the reason.
    """
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WorkdirError(
            f'workdir not writable: {workdir} ({existing} is a file, not a directory); '
            'choose another --workdir'
        )
    try:
        fd, probe = tempfile.mkstemp(prefix='.write_test.', dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(
            f'workdir not writable: {workdir} ({e.strerror or e} in {existing}); choose '
            'another --workdir or fix its permissions'
        ) from e


def as_json(config: ml_collections.ConfigDict) -> Any:
    """The config as `config.json` stores it (tuples become lists, placeholders null)."""
    return json.loads(config_lib.config_to_json(config))


def differences(previous: Any, current: Any, workdir: str = '') -> list[str]:
    """Lists `'dotted.key: old -> new'` for every field that differs (sorted by key).

    A field that is unset in `current` but holds paths under `workdir` in `previous` was
    filled in by the previous run itself (runlocal) and does not count.
    """
    old, new = _flatten(previous), _flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in IGNORED:
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a == b or _made_by_run(a, b, workdir):
            continue
        changes.append(f'{key}: {_show(a)} -> {_show(b)}')
    return changes


def format_changes(changes: list[str]) -> str:
    """Joins at most `MAX_LISTED` changes, then '... and N more'."""
    shown = '; '.join(changes[:MAX_LISTED])
    if len(changes) > MAX_LISTED:
        shown += f'; ... and {len(changes) - MAX_LISTED} more'
    return shown


def foreign_entries(workdir: str) -> list[str]:
    """The top-level entries of `workdir` that no stage of this library writes."""
    return sorted(n for n in os.listdir(workdir) if not _OWN.fullmatch(n))


def clear(workdir: str) -> None:
    """Deletes a previous run's outputs, `config.json` last (an interrupted delete repeats).

    Raises:
      WorkdirError: the workdir holds entries this library does not write (listed); then
        nothing is deleted.
    """
    foreign = foreign_entries(workdir)
    if foreign:
        shown = ', '.join(foreign[:MAX_LISTED]) + (' ...' if len(foreign) > MAX_LISTED else '')
        raise WorkdirError(
            f'overwrite=True would delete {workdir}, but it also holds files this library did '
            f'not write ({shown}); move them away or choose another --workdir (nothing was '
            'deleted)'
        )
    names = sorted(os.listdir(workdir), key=lambda n: n == CONFIG_FILE)
    for name in names:
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


class _Absent:
    def __repr__(self) -> str:
        return '(absent)'


_ABSENT = _Absent()


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f'{prefix}{key}' if not prefix else f'{prefix}.{key}'))
    return flat


def _made_by_run(old: Any, new: Any, workdir: str) -> bool:
    """True when `new` is unset and `old` names only paths inside `workdir`."""
    if not workdir or new not in (None, '', _ABSENT) or not isinstance(old, str) or not old:
        return False
    top = os.path.abspath(workdir)
    return all(os.path.abspath(p).startswith(top + os.sep) for p in old.split(','))


def _show(value: Any) -> str:
    if value is _ABSENT:
        return '(absent)'
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + '...'
