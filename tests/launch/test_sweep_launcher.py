"""launch/sweep.py: two defenses x GMI end to end, a failing cell, a kill and a resume."""

import os

import pytest

from configs import sweep_celeba
from tests.launch import crash
from tldmi_jax import attacks
from tldmi_jax.pipelines import sweep

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
    # From another directory than the repository: stage configs resolve all the same.
    proc = crash.run(_cmd(config, workdir), timeout=900, status=1, cwd=str(base))
    _check_failed_cells_line(proc)
    return config, workdir


def _check_failed_cells_line(proc):
    """The sweep finished the others, then exited 1 with one line naming the failed cell."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1]
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
    )
    assert not os.path.exists(os.path.join(workdir, 'cells', 'tldmi__gmi', 'cell.json'))
    first_cell = os.path.join(workdir, 'cells', 'none__gmi', 'cell.json')
    stamp = os.path.getmtime(first_cell) if os.path.exists(first_cell) else None

    out = crash.run(_cmd(config, workdir), timeout=900, status=1)
    assert '2/3 cells done' in out.stdout
    _check_failed_cells_line(out)
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
