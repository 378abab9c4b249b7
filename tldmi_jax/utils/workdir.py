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
command leaves them unset again. A workdir that was moved or copied (`mv`, `cp -r`) resumes:
paths under its old location compare equal to the same paths under the new one
(`inputs.json` records where the run started).

Before any of that, `prepare` checks every numeric field against its range
(`tldmi_jax.config_checks`) and takes the workdir's lock (`utils.lock`: one process per
workdir, held until the process exits or `release_all()`); a workdir that does not exist
yet is locked (and created) by `save_config`, so a run that fails on its inputs before it
leaves nothing behind.

`save_config` also fingerprints the run's inputs (`utils.fingerprint`: the target, prior,
evaluation model, attack directory, ... that the stage has resolved by then) into
`inputs.json`, and on a rerun compares them with the recorded ones: an input that changed
since the run started is refused (the run would mix outputs of two versions of it), unless
`config.overwrite` is True, which deletes the previous run's outputs and starts afresh. The
comparison sits in `save_config` because that is the one point every stage passes after it
has filled in its inputs (runlocal stand-ins included) and before it writes its first output.
"""

import json
import os
import re
import shutil
import tempfile
from typing import Any

import ml_collections
from absl import logging

from tldmi_jax import config_checks, config_lib
from tldmi_jax.utils import atomic, distributed, fingerprint, lock

CONFIG_FILE = 'config.json'
INPUTS_FILE = 'inputs.json'  # Input fingerprints and where the run started.
# Top-level fields that never count as a difference: the user study's serving options (what
# to do with a prepared study, and where to serve it) do not change the study.
# A sweep's `cells`/`only` choose what one command does with the same sweep.
IGNORED = ('overwrite', 'mode', 'host', 'port', 'invite', 'cells', 'only', 'distributed')
MAX_LISTED = 10
# Every top-level name a stage, the sweep or the demo writes into its workdir (a test runs
# each launcher and checks its workdir against this list). `overwrite` deletes only these;
# a workdir that also holds anything else (a user's notes) is refused, nothing deleted.
OUTPUT_NAMES = (
    r'config\.json|inputs\.json|metrics\.jsonl|metrics\.json|results\.(json|csv|md)',
    r'tensorboard|checkpoints|model_(best|final)|samples|priors?|pseudo_labels\.npz|targets?',
    r'student_\d+_\w+|distill\.json|augmented|batches|grids|reconstructions\.npz',
    r'attack\.json|p_reg\.npy|attack|eval|feature_cache|per_(identity|reconstruction)\.csv|groups\.csv',
    r'pairs\.png|report\.(md|html)|fisher(\.(json|png|csv))?|cells|cell\.json|eval_model',
    r'pretrain|sweep|summary\.json|timings\.json|runlocal|runlocal_data',
    r'utility_privacy\.png|events\.out\.tfevents\..*',
    r'study|answers\.sqlite(-wal|-shm|-journal)?|export|results|plan\.json|plan_slurm\.sh|slurm',
)
# Temporary names of the atomic writers (`utils.atomic`), the writability probe and the lock.
_TEMPORARY = r'(\..*\.tmp(\.\w+)?|\.write_test\..*|\.lock|\.tldmi_jax.*)'
_OWN = re.compile(rf'({"|".join(OUTPUT_NAMES)})(\.partial|\.new|\.old)?|{_TEMPORARY}')


class WorkdirError(ValueError):
    """The workdir cannot be used: not writable, or it holds a run with another config."""


WorkdirInUseError = lock.WorkdirInUseError


def prepare(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Checks the config and `workdir` before a stage writes anything to it.

    Args:
      config: the stage's config (as given; `config.overwrite` allows replacing a run).
      workdir: the stage's output directory (not created here).

    Raises:
      config_checks.ConfigValueError: a numeric field is out of its range (named).
      WorkdirError: the workdir is empty, not a writable directory, or it holds a run whose
        config differs (the message lists the fields, old -> new) and overwrite is off.
      WorkdirInUseError: another process is running on the workdir (its pid is named).

    In a multi-process run (`utils.distributed`) process 0 alone checks, locks and writes
    the workdir; the others only check the config.
    """
    config_checks.check(config)
    if not workdir:
        raise WorkdirError('--workdir is empty; give the directory the run writes to')
    if not distributed.is_main():
        return
    check_writable(workdir)
    lock.set_overwrite(workdir, bool(config.get('overwrite', False)))
    if os.path.isdir(workdir):
        lock.acquire(workdir)  # Before reading or clearing anything of a previous run.
    _compare_previous(config, workdir)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Records the resolved config (and its inputs' fingerprints); the run starts here.

    Locks the workdir (creating it) if `prepare` found none, then compares the fingerprints
    of the inputs the config names with those `inputs.json` recorded when the run started.

    Raises:
      WorkdirError: an input changed since the run started and overwrite is off (the
        message names the field and the path).
      WorkdirInUseError: another process started on the same new workdir first.
    """
    if distributed.is_main():
        _save_config(config, workdir)
    distributed.barrier(f'save_config:{workdir}')  # The workdir exists for every process.


def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if lock.acquire(workdir) and os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        _compare_previous(config, workdir)  # Written by a run that started after `prepare`.
    current = as_json(config)
    paths = fingerprint.input_paths(_flatten(current))
    inputs = fingerprint.fingerprints(paths)
    recorded = fingerprint.read(os.path.join(workdir, INPUTS_FILE))
    if recorded is not None:
        old = recorded.get('inputs') or {}
        changed = fingerprint.changed(old, inputs)
        if changed and not config.get('overwrite', False):
            shown = '; '.join(f'{field} ({path})' for field, path in changed)
            raise WorkdirError(
                f'{workdir}: input changed since the run started: {shown}; resuming would mix '
                'outputs of both versions. Restore the input, or pass --config.overwrite=True '
                'to delete that run and start afresh'
            )
        if changed:
            logging.warning(
                'overwrite=True: deleting the previous run in %s (inputs changed: %s)',
                workdir,
                ', '.join(field for field, _ in changed),
            )
            clear(workdir, keep=_inside(workdir, paths))
        else:
            inputs = {**old, **inputs}  # Keep fields this config no longer sets.
    fingerprint.write(os.path.join(workdir, INPUTS_FILE), workdir, inputs)
    atomic.write_text(os.path.join(workdir, CONFIG_FILE), config_lib.config_to_json(config))


def check_shared(config: ml_collections.ConfigDict, workdir: str, record: bool = True) -> None:
    """Checks a workdir that several processes share, one piece each (a sweep on a cluster).

    Like `prepare`, it checks the ranges, that the workdir is writable, and that the config
    `config.json` holds (if any) is this one; unlike it, it takes no lock and deletes nothing
    (`overwrite` does not apply). Without `config.json` it records this config when `record`
    (atomically: pieces that race write the same file).

    Raises:
      config_checks.ConfigValueError: a numeric field is out of its range.
      WorkdirError: not writable, or `config.json` holds another config (fields listed).
    """
    config_checks.check(config)
    if not distributed.is_main():  # Process 0 of a multi-process piece checks and records.
        return
    check_writable(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        if record:
            os.makedirs(workdir, exist_ok=True)
            atomic.write_text(path, config_lib.config_to_json(config))
        return
    with open(path) as f:
        changes = _changes(json.load(f), config, workdir)
    if changes:
        raise WorkdirError(
            f'{workdir} holds a run with a different config ({format_changes(changes)}); '
            'give every piece the same config (the commands of the plan)'
        )


def release_all() -> None:
    """Releases the workdir locks of this process (the launchers call it when they end)."""
    lock.release_all()


def _changes(previous: Any, config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The fields in which `config` differs from the `previous` config.json of `workdir`."""
    started = (fingerprint.read(os.path.join(workdir, INPUTS_FILE)) or {}).get('workdir')
    return differences(previous, as_json(config), workdir, started or '')


def _compare_previous(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses (or, with overwrite, clears) a previous run of another config in `workdir`."""
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
        changes = _changes(previous, config, workdir)
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


def _inside(workdir: str, paths: dict[str, list[str]]) -> set[str]:
    """The top-level entries of `workdir` that hold one of the inputs `paths`."""
    top = os.path.abspath(workdir) + os.sep
    return {
        p[len(top) :].split(os.sep)[0] for ps in paths.values() for p in ps if p.startswith(top)
    }


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


def differences(previous: Any, current: Any, workdir: str = '', started: str = '') -> list[str]:
    """Lists `'dotted.key: old -> new'` for every field that differs (sorted by key).

    A field that is unset in `current` but holds paths under `workdir` in `previous` was
    filled in by the previous run itself (runlocal) and does not count, nor does a field
    that `previous` lacks and `current` leaves unset (None): an option added to the library
    since that run started, at its default. `started` is where
    the previous run's workdir was (from `inputs.json`): if the workdir was moved since, a
    path under the old location equals the same path under the new one.
    """
    old, new = _flatten(previous), _flatten(current)
    move = _move(started, workdir)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in IGNORED:
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a is _ABSENT and b is None:
            continue
        moved = _relocate(a, *move) if move else a
        if a == b or moved == b or _made_by_run(moved, b, workdir):
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


def clear(workdir: str, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Deletes a previous run's outputs, `config.json` last (an interrupted delete repeats).

    The lock file stays (this run holds it), and so do the top-level entries in `keep` (the
    run's own inputs made under the workdir, e.g. a runlocal target).

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
        if name == lock.LOCK_NAME or name in keep:
            continue
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


def _move(started: str, workdir: str) -> tuple[str, str] | None:
    """`(old root, new root)` of a moved workdir, or None if it was not moved.

    The roots are the two paths without their common trailing components, so that a sweep
    moved whole maps the sibling paths its nested stages recorded (`old/sweep/targets/x`
    for `old/sweep/cells/y/attack`) as well as their own.
    """
    if not started or not workdir:
        return None
    a = os.path.abspath(started).split(os.sep)
    b = os.path.abspath(workdir).split(os.sep)
    if a == b:
        return None
    while len(a) > 1 and len(b) > 1 and a[-1] == b[-1]:
        a, b = a[:-1], b[:-1]
    return os.sep.join(a) or os.sep, os.sep.join(b) or os.sep


def _relocate(value: Any, old: str, new: str) -> Any:
    """`value` with every path under `old` (comma-separated ones too) moved under `new`."""
    if isinstance(value, list):
        return [_relocate(v, old, new) for v in value]
    if not isinstance(value, str) or not value:
        return value
    parts = []
    for part in value.split(','):
        if part == old:
            part = new
        elif part.startswith(old.rstrip(os.sep) + os.sep):
            part = new.rstrip(os.sep) + os.sep + part[len(old.rstrip(os.sep)) + 1 :]
        parts.append(part)
    return ','.join(parts)


def _show(value: Any) -> str:
    if value is _ABSENT:
        return '(absent)'
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + '...'
