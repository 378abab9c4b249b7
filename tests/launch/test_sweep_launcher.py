"""launch/sweep.py: two defenses x GMI end to end, a failing cell, a kill and a resume."""

import csv
import json
import os
import random
import re
import shlex
import shutil
import subprocess

import pytest

from configs import sweep_celeba, sweep_facescrub
from tests.launch import crash, in_process
from tldmi_jax import attacks
from tldmi_jax.pipelines import sweep, sweep_pieces

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A sweep config adding a target whose training fails (VGG k=24 splits conv4_1 from its BN).
_CONFIG = """
import os

from configs import sweep_celeba


def get_config(arg=None):
    config = sweep_celeba.get_config('runlocal')
    config.configs_dir = os.path.dirname(sweep_celeba.__file__)  # This file is elsewhere.
    config.stage_overrides.train.update(total_steps=20, eval_every_steps=20)  # Test time.
    # Two chunks of one identity batch (2 identities x 2 seeds) per cell: test time.
    config.stage_overrides.attack.update(
        {'attack': {'steps': 8, 'num_seeds': 2}, 'identities': {'count': 2}}
    )
    # FID/KID/PRDC (the runlocal Inception, random weights) are the evaluate tests' job.
    config.stage_overrides.evaluate.fid.enabled = False  # Test time.
    config.targets.broken = dict(
        train='celeba.py:arch=vgg16,defense=tldmi,runlocal', label='broken',
        overrides={'defense': {'fine_tune_from': '', 'freeze_layers': 24}}, checkpoint='')
    return config
"""


def _cmd(config, workdir):
    return crash.command('sweep', str(config), workdir)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """`(config file, workdir)` of one uninterrupted sweep."""
    base = tmp_path_factory.mktemp('sweep')
    config = base / 'sweep_test.py'
    config.write_text(_CONFIG)
    workdir = str(base / 'clean')
    # From another directory than the repository: stage configs resolve all the same. In
    # this process (test time); the killed run below is a process of its own.
    proc = crash.run_here(_cmd(config, workdir), status=1, cwd=str(base))
    _check_failed_cells_line(proc.stderr)
    return config, workdir


def _check_failed_cells_line(stderr):
    """The sweep finished the others, then exited 1 with one line naming the failed cell."""
    errors = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1]
    assert errors[0].startswith('error: 1 of 3 sweep cells failed (broken x gmi: ValueError')


# Milestones in the order the sweep reaches them (about 30 s after the imports).
_MILESTONES = (
    'targets/none/checkpoints',
    'targets/none/results.json',
    'priors/gmi/results.json',
    'cells/none__gmi/attack/batches/batch_000.npz',
    'cells/none__gmi/attack/reconstructions.npz',
    'eval_model/results.json',
    'cells/none__gmi/eval/metrics.json',
    'cells/none__gmi/cell.json',
    'targets/tldmi/checkpoints',
    'targets/tldmi/results.json',
    'cells/tldmi__gmi/attack/batches/batch_000.npz',
    'cells/tldmi__gmi/attack/reconstructions.npz',
)


def _cell(workdir, name):
    record = crash.load_json(os.path.join(workdir, 'cells', f'{name}__gmi', 'cell.json'))
    record.pop('seconds')
    record.pop('traceback', None)  # Names the workdir.
    return record


def test_sweep_kill_resume_and_failing_cell(reference, tmp_path):
    config, clean = reference
    workdir = str(tmp_path / 'sweep')
    crash.kill_at_random_point(
        _cmd(config, workdir),
        workdir,
        lambda w: crash.count_files(w, _MILESTONES),
        test='sweep',
        low=1,
        high=len(_MILESTONES),
        finished=lambda w: os.path.exists(os.path.join(w, 'cells', 'tldmi__gmi', 'cell.json')),
    )
    assert not os.path.exists(os.path.join(workdir, 'cells', 'tldmi__gmi', 'cell.json'))
    first_cell = os.path.join(workdir, 'cells', 'none__gmi', 'cell.json')
    stamp = os.path.getmtime(first_cell) if os.path.exists(first_cell) else None

    # The rerun in this process (no interpreter start-up; the same numbers as a subprocess).
    proc = crash.run_here(_cmd(config, workdir), status=1)
    assert '2/3 cells done' in proc.stdout
    _check_failed_cells_line(proc.stderr)
    if stamp is not None:
        assert os.path.getmtime(first_cell) == stamp  # finished cell skipped, not recomputed
    records = {name: _cell(workdir, name) for name in ('none', 'tldmi', 'broken')}
    assert records['none']['status'] == records['tldmi']['status'] == 'done'
    assert records['broken']['status'] == 'failed'
    assert 'freezes the conv of conv4_1' in records['broken']['error']
    for name in ('none', 'tldmi'):
        assert 0.0 <= records[name]['metrics']['attack/acc@1'] <= 1.0
    table = open(os.path.join(workdir, 'results.md')).read()
    assert '| broken | broken |' in table and 'failed: ValueError' in table
    assert os.path.getsize(os.path.join(workdir, 'utility_privacy.png')) > 1000
    csv_lines = open(os.path.join(workdir, 'results.csv')).read().strip().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith('target,defense,trainable_params')

    # The same cells, table and plot as the uninterrupted sweep.
    assert records == {name: _cell(clean, name) for name in ('none', 'tldmi', 'broken')}
    for name in ('results.csv', 'results.md', 'utility_privacy.png'):
        crash.assert_files_equal(os.path.join(clean, name), os.path.join(workdir, name))


@pytest.mark.parametrize('arch', ['vgg16', 'ir152', 'facenet64'])
def test_paper_table_config_resolves(arch):
    """`:table=paper` rows and columns; every stage config resolves (no compute)."""
    config = sweep_celeba.get_config(f'arch={arch},table=paper')
    base = sweep.configs_dir(config, os.path.join(ROOT, 'configs'))  # Beside the sweep config.
    config.data.root = '/data/celeba_mi'
    config.stage_overrides.train.init.checkpoint = '/ckpt/backbone'
    assert set(config.targets) == {'none', 'mid', 'bido', 'tldmi'}
    assert config.attacks == ['gmi', 'kedmi', 'gmi+lomma', 'kedmi+lomma', 'plgmi']
    defenses = {}
    for name, spec in config.targets.items():
        train = sweep._stage_config(config, spec.train, 'train', base=base)
        sweep._apply(train, spec.overrides)
        assert train.model.arch == arch and train.data.root == '/data/celeba_mi'
        assert train.init.checkpoint == '/ckpt/backbone' and not spec.checkpoint
        defenses[name] = train.defense
        if name == 'mid':  # The VIB layer is in no backbone: kept freshly initialised.
            assert list(train.init.dont_load).count('vib/.*') == 1
    assert {n: d.name for n, d in defenses.items()} == {
        'none': 'none',
        'mid': 'mid',
        'bido': 'bido',
        'tldmi': 'tldmi',
    }
    assert defenses['tldmi'].freeze_layers == -1  # The architecture's official k.
    assert defenses['mid'].mid_beta == sweep_celeba.MID_BETA
    assert (defenses['bido'].bido_lambda_x, defenses['bido'].bido_lambda_y) == (0.05, 0.5)
    for attack in config.attacks:
        acfg = sweep._stage_config(config, config.stages.attack, 'attack', attack, base)
        assert attacks.resolve(acfg.attack).label == attack
        assert acfg.data.root == '/data/celeba_mi'
    for prior in ('gmi', 'kedmi', 'plgmi'):
        assert (
            sweep._stage_config(config, config.stages.gan, 'gan', prior, base).prior.kind == prior
        )
    for stage in ('distill', 'evaluate'):
        assert sweep._stage_config(config, config.stages[stage], stage, base=base).data.root
    with pytest.raises(ValueError, match='table must be one of'):
        sweep_celeba.get_config('table=nope')


def test_stage_configs_resolve_beside_the_sweep_config_from_any_directory(tmp_path, monkeypatch):
    """The sweep config's `configs_dir` ('') is its own directory, not the cwd's `configs/`."""
    monkeypatch.chdir(tmp_path)
    config = sweep_celeba.get_config('runlocal')
    base = sweep.configs_dir(config, os.path.join(ROOT, 'configs'))
    assert base == os.path.join(ROOT, 'configs', '')
    train = sweep._stage_config(config, config.targets.none.train, 'train', base=base)
    assert train.model.arch == 'vgg16_tiny'
    with pytest.raises(FileNotFoundError, match='celeba.py'):
        sweep._stage_config(config, config.targets.none.train, 'train', base=str(tmp_path))


def test_paper_table_plan_lists_every_piece_once_with_its_dependencies(tmp_path):
    """The cluster plan of the paper's table (no compute): priors per target, students."""
    config = sweep_celeba.get_config('arch=vgg16,table=paper')
    config.eval_model.checkpoint = '/ckpt/eval'
    pieces = sweep_pieces.plan(config, str(tmp_path), os.path.join(ROOT, 'configs'))
    ids = [p['id'] for p in pieces]
    assert len(ids) == len(set(ids))
    targets = ('none', 'mid', 'bido', 'tldmi')
    expected = {f'target:{t}' for t in targets} | {'prior:gmi', 'results'}
    expected |= {f'prior:{k}:{t}' for k in ('kedmi', 'plgmi') for t in targets}
    expected |= {f'students:{t}' for t in targets}
    expected |= {f'cell:{t}__{a}' for t in targets for a in config.attacks}
    assert set(ids) == expected
    deps = {p['id']: p['deps'] for p in pieces}
    assert deps['prior:gmi'] == [] and deps['prior:kedmi:mid'] == ['target:mid']
    assert deps['students:bido'] == ['target:bido']
    assert deps['cell:tldmi__gmi'] == ['target:tldmi', 'prior:gmi']
    assert deps['cell:none__kedmi+lomma'] == ['target:none', 'prior:kedmi:none', 'students:none']
    assert deps['cell:mid__plgmi'] == ['target:mid', 'prior:plgmi:mid']
    assert set(deps['results']) == {i for i in ids if i.startswith('cell:')}
    # Upstream first, and the levels respect every dependency.
    position = {i: n for n, i in enumerate(ids)}
    assert all(position[d] < position[i] for i in ids for d in deps[i])
    level = {i: n for n, group in enumerate(sweep_pieces.levels(pieces)) for i in group}
    assert all(level[d] < level[i] for i in ids for d in deps[i])
    # Targets + the GMI prior; the per-target priors, students and the 4 GMI cells (they need
    # nothing else); the other 16 cells; the table.
    assert [len(g) for g in sweep_pieces.levels(pieces)] == [5, 16, 16, 1]


def test_facescrub_ppa_table_plan_and_its_converted_prior(tmp_path):
    """The high-resolution table: four ResNet-152 rows x PPA, whose StyleGAN2 is a converted
    prior the config names (no piece), or under runlocal a tiny stand-in piece."""
    config = sweep_facescrub.get_config('')
    config.eval_model.checkpoint = '/ckpt/inception_v3'
    configs = os.path.join(ROOT, 'configs')
    with pytest.raises(ValueError, match=r'Set --config.priors.stylegan2=DIR'):
        sweep_pieces.run_piece(config, str(tmp_path / 'none'), 'prior:stylegan2', configs)
    config.priors.stylegan2 = '/ckpt/ffhq'
    deps = {p['id']: p['deps'] for p in sweep_pieces.plan(config, str(tmp_path), configs)}
    rows = ('none', 'tldmi', 'negls', 'bido')
    assert set(deps) == {f'target:{t}' for t in rows} | {f'cell:{t}__ppa' for t in rows} | {
        'results'
    }
    assert deps['cell:bido__ppa'] == ['target:bido']
    local = sweep_facescrub.get_config('runlocal')
    deps = {p['id']: p['deps'] for p in sweep_pieces.plan(local, str(tmp_path / 'rl'), configs)}
    assert deps['prior:stylegan2'] == []
    assert deps['cell:tldmi__ppa'] == ['target:tldmi', 'prior:stylegan2', 'eval_model']
    dogs = sweep_facescrub.get_config('dataset=dogs,arch=densenet121')
    assert sorted(dogs.targets) == ['negls', 'none', 'tldmi']
    assert dogs.targets.tldmi.train == 'stanford_dogs.py:arch=densenet121,defense=tldmi'


def _piece_argv(command):
    return shlex.split(command)[2:]  # Without the interpreter and the launcher.


def test_planned_pieces_in_a_shuffled_order_give_the_same_table(reference, tmp_path, capsys):
    """--config.cells=plan, then every piece on its own (in-process), upstream first in a
    shuffled order: the same results as the whole sweep; a piece before its upstream and the
    broken target fail with one line each."""
    config, clean = reference
    workdir = str(tmp_path / 'pieces')
    argv = [f'--config={config}', f'--workdir={workdir}']
    assert in_process.call_launcher('sweep', [*argv, '--config.cells=plan']) == 0
    printed = json.loads(capsys.readouterr().out.rsplit('\n]\n', 1)[0] + '\n]')
    with open(os.path.join(workdir, 'plan.json')) as f:
        pieces = json.load(f)['pieces']
    assert printed == pieces
    ids = [p['id'] for p in pieces]
    assert sorted(ids) == sorted(
        ['eval_model', 'prior:gmi', 'results']
        + [f'target:{t}' for t in ('none', 'tldmi', 'broken')]
        + [f'cell:{t}__gmi' for t in ('none', 'tldmi', 'broken')]
    )
    deps = {p['id']: set(p['deps']) for p in pieces}
    assert deps['cell:none__gmi'] == {'target:none', 'prior:gmi', 'eval_model'}
    for p in pieces:
        assert f'--workdir={workdir}' in p['command'] and p['command'].endswith(p['id'])
    # A cell before its target: one error line naming what to run first; nothing written.
    too_early = _piece_argv(pieces[ids.index('cell:none__gmi')]['command'])
    assert in_process.call_launcher('sweep', too_early) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('error: cell:none__gmi needs target:none, prior:gmi, eval_model')
    assert '--config.only=target:none' in err
    assert not os.path.exists(os.path.join(workdir, 'cells'))

    rng = random.Random(3)
    finished, failed = set(), set()
    todo = [i for i in ids if i != 'results']
    while todo:
        ready = [i for i in todo if deps[i] <= finished or deps[i] & failed]
        piece = rng.choice(ready)
        todo.remove(piece)
        if deps[piece] & failed:
            failed.add(piece)  # Its upstream failed: not run.
            continue
        status = in_process.call_launcher('sweep', _piece_argv(pieces[ids.index(piece)]['command']))
        (finished if status == 0 else failed).add(piece)
    capsys.readouterr()
    assert failed == {'target:broken', 'cell:broken__gmi'}
    assert in_process.call_launcher('sweep', _piece_argv(pieces[-1]['command'])) == 0

    def rows(path):
        with open(os.path.join(path, 'results.csv')) as f:
            return {r['target']: r for r in csv.DictReader(f)}

    whole, parts = rows(clean), rows(workdir)
    assert parts['none'] == whole['none'] and parts['tldmi'] == whole['tldmi']
    assert parts['broken']['status'] == 'missing' and whole['broken']['status'] == 'failed'
    assert {n: _cell(workdir, n) for n in ('none', 'tldmi')} == {
        n: _cell(clean, n) for n in ('none', 'tldmi')
    }


def test_slurm_script_submits_one_array_per_level(tmp_path):
    """plan_slurm.sh with a stand-in `sbatch`: levels chained afterok, the table afterany; an
    array task runs its piece (here the results table) through the launcher."""
    workdir = str(tmp_path / 'sweep')
    config = sweep_celeba.get_config('runlocal')
    command = ['python', 'launch/sweep.py', '--config=c.py']
    pieces = sweep_pieces.write_plan(
        config, workdir, command, os.path.join(ROOT, 'configs'), cwd=ROOT
    )
    script = os.path.join(workdir, 'plan_slurm.sh')
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'sbatch').write_text(
        '#!/bin/bash\necho "$@" >> "$SBATCH_LOG"\necho $(( 100 + $(wc -l < "$SBATCH_LOG") ))\n'
    )
    (fake / 'sbatch').chmod(0o755)
    log = tmp_path / 'sbatch.log'
    env = {**os.environ, 'PATH': f'{fake}:{os.environ["PATH"]}', 'SBATCH_LOG': str(log)}
    env['SBATCH_ARGS'] = '--gres=gpu:1'
    proc = subprocess.run(['bash', script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().strip().splitlines()
    groups = sweep_pieces.levels(pieces)
    assert groups == [
        ['target:none', 'target:tldmi', 'eval_model', 'prior:gmi'],
        ['cell:none__gmi', 'cell:tldmi__gmi'],
        ['results'],
    ]
    assert len(calls) == len(groups)
    for n, (call, group) in enumerate(zip(calls, groups, strict=True)):
        assert f'--array=0-{len(group) - 1}' in call and '--gres=gpu:1' in call
        assert f'TLDMI_SWEEP_LEVEL={n}' in call and call.endswith(script)
        if n:
            after = 'afterany' if n == len(groups) - 1 else 'afterok'
            assert f'--dependency={after}:{100 + n}' in call
        else:
            assert '--dependency' not in call
    # An array task: level 1, index 1 runs the second cell's command (a stand-in python).
    (fake / 'python').write_text('#!/bin/bash\necho "ran: $*"\n')
    (fake / 'python').chmod(0o755)
    task = {**env, 'SLURM_ARRAY_TASK_ID': '1', 'TLDMI_SWEEP_LEVEL': '1'}
    proc = subprocess.run(['bash', script], env=task, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = 'ran: launch/sweep.py --config=c.py --config.only=cell:tldmi__gmi'
    assert proc.stdout.strip() == expected
    assert len(log.read_text().strip().splitlines()) == len(groups)  # The task submits nothing.
    # TLDMI_MULTIHOST=1: the piece runs through srun on every task, as a multi-process run.
    (fake / 'srun').write_text('#!/bin/bash\necho "srun"\nexec "$@"\n')
    (fake / 'srun').chmod(0o755)
    task['TLDMI_MULTIHOST'] = '1'
    proc = subprocess.run(['bash', script], env=task, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == ['srun', f'{expected} --config.distributed=True']


# --- notebooks/tldmi_celeba_reproduce.ipynb, on a copy of the reference sweep -----------------

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'tldmi_celeba_reproduce.ipynb')


def _execute_notebook(config, workdir):
    """Runs the reproduction notebook on `config` and `workdir`; returns it executed."""
    nbclient = pytest.importorskip('nbclient')
    nbformat = pytest.importorskip('nbformat')
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(params) == 1
    settings = dict(RUNLOCAL=True, INSTALL=False, WORKDIR=workdir, CONFIG=str(config))
    params[0].source += ''.join(f'\n{name} = {value!r}' for name, value in settings.items())
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': ROOT}}
    )
    client.execute()  # Raises CellExecutionError on a cell that errors.
    return nb


def _outputs(nb):
    return [out for cell in nb.cells if cell.cell_type == 'code' for out in cell.outputs]


def _printed(nb):
    return ''.join(out.get('text', '') for out in _outputs(nb) if out.output_type == 'stream')


def _markdown(nb):
    data = [out.get('data', {}) for out in _outputs(nb)]
    return [d['text/markdown'] for d in data if 'text/markdown' in d]


def _pngs(nb):
    return [out['data']['image/png'] for out in _outputs(nb) if 'image/png' in out.get('data', {})]


# The kernel's zmq threads may report a closed event loop while the client shuts down.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_reproduce_notebook_runs_the_missing_pieces_and_resumes(reference, tmp_path):
    """The notebook on a copy of the whole sweep with one cell deleted: it skips the finished
    pieces, recomputes that cell (equal to the whole sweep's), reports the broken target's
    failure and skips its cell, and shows the table, the plot and each cell's grid; a second
    run recomputes nothing."""
    config, clean = reference
    workdir = str(tmp_path / 'notebook')
    shutil.copytree(clean, workdir)
    shutil.rmtree(os.path.join(workdir, 'cells', 'tldmi__gmi'))
    nb = _execute_notebook(config, workdir)
    assert not [out for out in _outputs(nb) if out.output_type == 'error']
    printed = _printed(nb)
    for piece in ('target:none', 'target:tldmi', 'eval_model', 'prior:gmi', 'cell:none__gmi'):
        assert f'{piece}: skip (finished)' in printed, printed
    assert 'cell:tldmi__gmi: done in ' in printed, printed
    assert re.search(r'target:broken: FAILED after \d+ s: ValueError', printed), printed
    assert 'cell:broken__gmi: skip, upstream target:broken failed' in printed, printed
    assert _cell(workdir, 'tldmi') == _cell(clean, 'tldmi')
    # The plan table, the results table (no image link), the captions of the two grids.
    tables = [m for m in _markdown(nb) if '| acc@1 |' in m]
    assert len(tables) == 1 and '![' not in tables[0]
    for target, status in (('none', 'done'), ('tldmi', 'done'), ('broken', 'failed')):
        row = [line for line in tables[0].splitlines() if line.startswith(f'| {target} |')]
        assert len(row) == 1, (target, tables[0])
        assert row[0].rstrip(' |').rsplit('| ', 1)[-1].startswith(status), row[0]
    captions = [m for m in _markdown(nb) if m.endswith(' x GMI')]
    assert captions == ['**no defense** x GMI', '**TL-DMI (official k)** x GMI']
    assert len(_pngs(nb)) == 1 + len(captions)  # The utility-vs-privacy plot, then the grids.
    assert 'broken x gmi: no reconstructions' in printed

    again = _execute_notebook(config, workdir)
    printed = _printed(again)
    assert 'done in ' not in printed, printed  # Only the broken target is tried again.
    assert printed.count('skip (finished)') == 7, printed  # All but the broken two.
    assert [m for m in _markdown(again) if '| acc@1 |' in m] == tables
    assert _pngs(again) == _pngs(nb)
