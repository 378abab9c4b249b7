"""The defense x attack matrix: train or load targets, priors, attacks, evaluations.

`run(config, workdir)` walks every (defended target, attack) cell:

* the target is trained with `launch/train.py`'s config file plus the target's overrides
  (`workdir/targets/<name>`), or loaded when `checkpoint` is given;
* priors: the GMI prior is trained once on public data (`workdir/priors/gmi`); the KEDMI GAN,
  the PLG-MI cGAN and LOMMA's augmented models depend on the target and are retrained per
  target (`workdir/targets/<name>/priors/...`); PPA's StyleGAN2 is converted, not trained:
  `config.priors.stylegan2` names it (under runlocal a tiny random one stands in,
  `workdir/priors/stylegan2`);
* the attack runs and is evaluated (`workdir/cells/<target>__<attack>/{attack,eval}`).

Every stage resumes from its own workdir, each finished cell is recorded in `cell.json`, and a
rerun skips finished cells and resumes the unfinished one. A failing cell is recorded with its
error and the sweep goes on. The results table (`results.csv`, `results.md`) and the
utility-vs-privacy plot are rewritten after every cell.

On a cluster the same matrix runs as independent jobs: `sweep_pieces.py`.

Each stage's config comes from its own config file (e.g. `gan_celeba.py:prior=kedmi`), so the
sweep never duplicates a stage's defaults; `data.root`/`data.data_dir` go to every stage,
`stage_overrides` set nested fields of a stage, and each target's `overrides` set its training
fields. Stage config files are found relative to `configs_dir`, which is itself relative to
the sweep config file's directory (empty: that directory), whatever the current directory.
"""

import json
import os
import time
import traceback
from typing import Any

import ml_collections
from absl import logging

from tldmi_jax import attacks, config_lib, priors
from tldmi_jax.attacks import runner
from tldmi_jax.evaluation import evaluate
from tldmi_jax.pipelines import runlocal
from tldmi_jax.reporting import tables
from tldmi_jax.train import classifier, distill, gan
from tldmi_jax.utils import atomic, distributed, metrics
from tldmi_jax.utils import workdir as workdir_lib

# Priors that do not depend on the target: one for every cell (`workdir/priors/<kind>`).
SHARED_PRIORS = ('gmi', 'stylegan2')


class CellsFailed(RuntimeError):
    """Some cells of a finished sweep failed (the others ran); the message lists them."""


def _apply(config: ml_collections.ConfigDict, overrides: Any, prefix: str = '') -> None:
    """Sets nested `overrides` ({'defense': {'freeze_layers': 26}}) on `config`.

    Raises:
      ValueError: naming a field that the stage's config does not have.
    """
    for key, value in dict(overrides or {}).items():
        if key not in config:
            raise ValueError(f"Unknown config field '{prefix}{key}'.")
        if isinstance(value, dict | ml_collections.ConfigDict) and isinstance(
            config[key], ml_collections.ConfigDict
        ):
            _apply(config[key], value, f'{prefix}{key}.')
        else:
            config[key] = value


# The ':key=' argument that selects a variant in each stage's config file.
_VARIANT_ARG = {'gan': 'prior', 'attack': 'attack'}


def configs_dir(sweep: ml_collections.ConfigDict, config_file_dir: str = '') -> str:
    """Where the stage config files are: `sweep.configs_dir` resolved against the directory
    of the sweep's config file (empty: that directory itself; no file: the current one)."""
    return os.path.join(config_file_dir or os.getcwd(), sweep.get('configs_dir') or '')


def _stage_config(
    sweep: ml_collections.ConfigDict, spec: Any, stage: str, variant: str = '', base: str = ''
):
    """A stage's config, with the sweep's data paths and the stage overrides set.

    Args:
      sweep: the sweep config.
      spec: a config file 'file.py[:args]' (relative to `base`), or the config itself
        inline (a ConfigDict; for 'gan' and 'attack' one per variant:
        `{'gmi': ConfigDict, 'kedmi': ...}`).
      stage: 'train' | 'gan' | 'distill' | 'attack' | 'evaluate'.
      variant: the prior kind (gan) or attack name (attack).
      base: the directory of the stage config files (`configs_dir`).
    """
    if isinstance(spec, ml_collections.ConfigDict):
        if variant:
            if variant not in spec:
                raise ValueError(f'The sweep has no inline {stage} config for {variant!r}.')
            spec = spec[variant]
        config = ml_collections.ConfigDict(spec.to_dict())
    else:
        if variant:
            spec = _with_arg(spec, f'{_VARIANT_ARG[stage]}={variant}')
        config = config_lib.load_config_file(spec, base)
    for field in ('root', 'data_dir'):
        value = sweep.data.get(field)
        if value and 'data' in config and field in config.data:
            config.data[field] = value
    _apply(config, sweep.stage_overrides.get(stage, {}))
    return config


def _with_arg(spec: str, extra: str) -> str:
    """Appends 'key=value' to a 'file.py[:args]' spec."""
    return f'{spec},{extra}' if ':' in spec else f'{spec}:{extra}'


def finished(path: str) -> bool:
    return os.path.exists(os.path.join(path, 'results.json'))


class Sweep:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str, base: str):
        self.config = config
        self.workdir = workdir
        self.base = base

    def stage_config(self, spec: Any, stage: str, variant: str = ''):
        return _stage_config(self.config, spec, stage, variant, self.base)

    def target_dir(self, name: str) -> str:
        return self.config.targets[name].get('checkpoint') or os.path.join(
            self.workdir, 'targets', name
        )

    def given_prior(self, kind: str) -> str:
        """The prior of `kind` the config names (`config.priors.<kind>`), or ''."""
        return (self.config.get('priors') or {}).get(kind) or ''

    def prior_dir(self, kind: str, target_name: str) -> str:
        if self.given_prior(kind):
            return self.given_prior(kind)
        if kind in SHARED_PRIORS:
            return os.path.join(self.workdir, 'priors', kind)
        return os.path.join(self.workdir, 'targets', target_name, 'priors', kind)

    def prior_finished(self, kind: str, target_name: str) -> bool:
        path = self.prior_dir(kind, target_name)
        if kind in priors.TRAINABLE:
            return finished(path)
        return os.path.isfile(os.path.join(path, priors.SPEC_FILE))

    def students_dir(self, target_name: str) -> str:
        return os.path.join(self.workdir, 'targets', target_name, 'augmented')

    def cell_dir(self, target_name: str, attack: str) -> str:
        return os.path.join(self.workdir, 'cells', f'{target_name}__{attack}')

    def needs(self, attack: str) -> tuple[str, ...]:
        """What the attack needs: its prior kind first, then 'students' for LOMMA."""
        acfg = self.stage_config(self.config.stages.attack, 'attack', attack)
        return tuple(attacks.needs(attacks.resolve(acfg.attack)))

    def target(self, name: str) -> str:
        spec = self.config.targets[name]
        if spec.get('checkpoint'):
            return spec.checkpoint
        path = self.target_dir(name)
        if not finished(path):
            config = self.stage_config(spec.train, 'train')
            _apply(config, spec.get('overrides', {}))
            logging.info('sweep: training target %s in %s', name, path)
            classifier.train_and_evaluate(config, path)
        return path

    def prior(self, kind: str, target_name: str, target: str) -> str:
        path = self.prior_dir(kind, target_name)
        if kind not in priors.TRAINABLE:
            return self.converted_prior(kind, path)
        if not finished(path):
            config = self.stage_config(self.config.stages.gan, 'gan', kind)
            if kind != 'gmi':
                config.target.checkpoint = target
            logging.info('sweep: training the %s prior in %s', kind, path)
            gan.train_and_evaluate(config, path)
        return path

    def converted_prior(self, kind: str, path: str) -> str:
        """A prior that is converted, not trained (PPA's StyleGAN2): the one the config names;
        under runlocal without one, a tiny random one at the attack's image size."""
        if self.given_prior(kind) or self.prior_finished(kind, ''):
            return path
        if not self.config.get('runlocal', False):
            raise ValueError(
                f'Set --config.priors.{kind}=DIR: a {kind} prior is converted, not trained '
                '(launch/convert.py --kind=stylegan2_ada --src=ffhq.pkl --dst=DIR).'
            )
        size = self.stage_config(self.config.stages.attack, 'attack', 'ppa').data.image_size
        logging.info('sweep: writing a tiny random %s prior (%d px) to %s', kind, size, path)
        if distributed.is_main():
            priors.save_prior(path, priors.make_prior(kind, image_size=size, tiny=True))
        distributed.barrier(f'prior:{path}')
        return path

    def students(self, target_name: str, target: str) -> str:
        path = self.students_dir(target_name)
        config = self.stage_config(self.config.stages.distill, 'distill')
        config.target.checkpoint = target
        summary = distill.train_and_evaluate(config, path)
        return ','.join(s['dir'] for s in summary['students'])

    def eval_model(self) -> str | None:
        """The evaluation model; with runlocal and none given, one tiny model for all cells."""
        if self.config.eval_model.get('checkpoint'):
            return self.config.eval_model.checkpoint
        if not self.config.get('runlocal', False):
            return None
        return runlocal.eval_model(os.path.join(self.workdir, 'eval_model'))

    def cell(self, target_name: str, attack: str) -> dict[str, Any]:
        cell_dir = self.cell_dir(target_name, attack)
        target = self.target(target_name)
        acfg = self.stage_config(self.config.stages.attack, 'attack', attack)
        needs = self.needs(attack)
        acfg.target.checkpoint = target
        acfg.prior.checkpoint = self.prior(needs[0], target_name, target)
        if 'students' in needs:
            acfg.augmented.checkpoints = self.students(target_name, target)
        attack_dir = os.path.join(cell_dir, 'attack')
        runner.run(acfg, attack_dir)
        ecfg = self.stage_config(self.config.stages.evaluate, 'evaluate')
        ecfg.attack_dir = attack_dir
        ecfg.target.checkpoint = target
        if self.eval_model():
            ecfg.eval_model.checkpoint = self.eval_model()
        elif not ecfg.get('runlocal', False):
            raise ValueError('Set --config.eval_model.checkpoint (the evaluation model).')
        return evaluate.evaluate(ecfg, os.path.join(cell_dir, 'eval'))


def target_info(sweep: Sweep, name: str) -> dict[str, Any]:
    """Defense description and parameter counts of a trained target (from its results)."""
    spec = sweep.config.targets[name]
    info = {'target': name, 'defense': spec.get('label') or spec.train.split(':', 1)[-1]}
    path = spec.get('checkpoint') or os.path.join(sweep.workdir, 'targets', name)
    results = os.path.join(path, 'results.json')
    if os.path.exists(results):
        with open(results) as f:
            res = json.load(f)
        info['trainable_params'] = res.get('params/trainable')
        info['target/natural_acc'] = res.get('target/natural_acc')
    return info


def run(
    config: ml_collections.ConfigDict, workdir: str, config_file_dir: str = ''
) -> list[dict[str, Any]]:
    """Runs (or resumes) the sweep; returns one row per cell (see `tables.COLUMNS`).

    Stage workdirs are recorded as absolute paths in their configs, so the same sweep
    reached through a relative or an absolute `workdir` resumes alike.

    Args:
      config: the sweep config (e.g. `configs/sweep_celeba.py`).
      workdir: the sweep's output directory.
      config_file_dir: the directory of the sweep's config file, against which
        `configs_dir` resolves (empty: the current directory).
    """
    workdir = os.path.abspath(workdir)
    metrics.quiet_libraries()
    check_config(config)
    workdir_lib.prepare(config, workdir)
    workdir_lib.save_config(config, workdir)
    sweep = Sweep(config, workdir, configs_dir(config, config_file_dir))
    rows = []
    cells = [(t, a) for t in config.targets for a in config.attacks]
    for index, (target_name, attack) in enumerate(cells):
        record = read_record(sweep, target_name, attack)
        if record is None or record.get('status') != 'done':  # A failed one is tried again.
            logging.info('sweep: cell %d/%d: %s x %s', index + 1, len(cells), target_name, attack)
            record = run_cell(sweep, target_name, attack)
        rows.append({**target_info(sweep, target_name), 'attack': attack, **tables.row(record)})
        if distributed.is_main():
            tables.write(workdir, rows)
    return rows


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses unknown attacks and an empty target list before anything is written."""
    for name in config.attacks:
        # Normalised as the stage config files do (`gmi+lomma`, the old `lomma_gmi`).
        name, lomma = config_lib.attack_name(name)
        attacks.resolve(ml_collections.ConfigDict({'name': name, 'lomma': lomma}))
    if not config.targets:
        raise ValueError('No targets in config.targets.')


def read_record(sweep: Sweep, target_name: str, attack: str) -> dict[str, Any] | None:
    """The cell's `cell.json`, or None when it has not run."""
    path = os.path.join(sweep.cell_dir(target_name, attack), 'cell.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_cell(sweep: Sweep, target_name: str, attack: str) -> dict[str, Any]:
    """Runs one cell (training what it needs) and records the outcome in `cell.json`."""
    tic = time.perf_counter()
    try:
        record = {'status': 'done', 'metrics': sweep.cell(target_name, attack)}
    except Exception as e:  # A failing cell must not stop the others.
        logging.error('sweep: cell %s x %s failed: %s', target_name, attack, e)
        record = {
            'status': 'failed',
            'error': f'{type(e).__name__}: {e}',
            'traceback': traceback.format_exc(),
        }
    record['seconds'] = time.perf_counter() - tic
    path = os.path.join(sweep.cell_dir(target_name, attack), 'cell.json')
    if distributed.is_main():  # A multi-process run: every process ran the cell; one writes.
        atomic.write_json(path, record)
    distributed.barrier(f'cell:{path}')
    return record


def check_done(rows: list[dict[str, Any]], workdir: str) -> None:
    """Raises `CellsFailed` naming every cell that did not finish (after the others ran)."""
    failed = [r for r in rows if r.get('status') != 'done']
    if failed:
        cells = '; '.join(f'{r["target"]} x {r["attack"]}: {r.get("error", "?")}' for r in failed)
        raise CellsFailed(
            f'{len(failed)} of {len(rows)} sweep cells failed ({cells}); the others finished. '
            f'Details: {os.path.join(workdir, "results.md")} and cells/*/cell.json; fix the '
            'cause and rerun the same command (finished cells are skipped)'
        )
