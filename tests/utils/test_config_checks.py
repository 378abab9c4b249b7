"""Numeric config ranges: every shipped config passes, every bad value is named with its range."""

import math

import pytest

from tldmi_jax import config_checks, config_lib
from tldmi_jax.utils import workdir

CONFIGS = (
    'celeba.py',
    'celeba.py:runlocal',
    'celeba.py:arch=ir152,defense=tldmi+dpsgd+mid+bido+negls',
    'eval_celeba.py',
    'eval_celeba.py:fresh_head',
    'fashion_mnist.py',
    'gan_celeba.py:prior=gmi',
    'gan_celeba.py:prior=kedmi,runlocal',
    'gan_celeba.py:prior=plgmi',
    'attack_celeba.py',
    'attack_celeba.py:attack=lomma_kedmi,runlocal',
    'distill_celeba.py',
    'distill_celeba.py:runlocal',
    'evaluate_celeba.py',
    'evaluate_celeba.py:runlocal',
    'fisher_celeba.py:runlocal',
    'sweep_celeba.py',
    'sweep_celeba.py:table=paper,runlocal',
    'demo.py:kedmi',
    'demo.py:runlocal',
    'facescrub.py:arch=resnet152,defense=tldmi+negls',
    'facescrub.py:arch=inception_v3,runlocal',
    'stanford_dogs.py:arch=densenet121,defense=tldmi',
    'attack_ppa.py',
    'attack_ppa.py:dataset=dogs,runlocal',
    'evaluate_ppa.py',
    'evaluate_ppa.py:dataset=dogs,runlocal',
    'sweep_facescrub.py',
    'sweep_facescrub.py:dataset=dogs,runlocal',
)
# Free-form constructor and builder arguments (`model.kwargs`, `data.kwargs`): only finite.
UNCHECKED = ('kwargs',)


def _load(spec: str):
    return config_lib.load_config_file(spec, 'configs')


@pytest.mark.parametrize('spec', CONFIGS)
def test_every_shipped_config_passes_and_every_number_has_a_range(spec):
    config = _load(spec)
    assert config_checks.problems(config) == []
    for path, value in config_checks._leaves(config.to_dict()):
        if config_checks._is_number(value) and not set(path) & set(UNCHECKED):
            assert config_checks.rule(path) is not None, '.'.join(path)


@pytest.mark.parametrize(
    'spec, field, value, message',
    [
        (
            'attack_celeba.py',
            'attack.lr',
            math.nan,
            'config.attack.lr=nan: must be a finite number > 0',
        ),
        ('attack_celeba.py', 'attack.steps', 0, 'config.attack.steps=0: must be an integer >= 1'),
        ('attack_celeba.py', 'attack.num_seeds', 0, 'attack.num_seeds=0: must be an integer >= 1'),
        ('attack_celeba.py', 'identities.batch_size', 0, 'identities.batch_size=0: must be an'),
        ('attack_celeba.py', 'attack.lam', math.inf, 'config.attack.lam=inf: must be a finite'),
        ('celeba.py', 'total_steps', -5, 'config.total_steps=-5: must be an integer >= 0'),
        ('celeba.py', 'defense.freeze_layers', -5, 'freeze_layers=-5: must be -1 (the arch'),
        ('celeba.py', 'batch_size', 0, 'config.batch_size=0: must be an integer >= 1'),
        ('celeba.py', 'seed', -1, 'config.seed=-1: must be an integer >= 0'),
        (
            'celeba.py',
            'optim.momentum',
            1.0,
            'optim.momentum=1.0: must be a finite number in [0, 1)',
        ),
        ('celeba.py', 'defense.dp_delta', 1.0, 'dp_delta=1.0: must be a finite number in (0, 1)'),
        ('celeba.py', 'data.channels', 2, 'config.data.channels=2: must be 1 or 3'),
        ('celeba.py', 'data.val_fraction', -0.1, 'val_fraction=-0.1: must be a finite number in'),
        ('celeba.py', 'defense.ls_alpha', math.nan, 'ls_alpha=nan: must be a finite number'),
        ('gan_celeba.py', 'n_critic', 0, 'config.n_critic=0: must be an integer >= 1'),
        ('evaluate_celeba.py', 'knn.chunk_size', 0, 'config.knn.chunk_size=0: must be an'),
        ('evaluate_celeba.py', 'fid.batch_size', 0, 'config.fid.batch_size=0: must be an'),
    ],
)
def test_a_bad_value_names_the_field_and_the_range(spec, field, value, message):
    config = _load(spec)
    *parents, leaf = field.split('.')
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value
    with pytest.raises(config_checks.ConfigValueError) as err:
        config_checks.check(config)
    assert message in str(err.value)


def test_placeholders_mean_the_default_and_good_values_pass():
    config = _load('attack_celeba.py')
    assert config.attack.lr is None and config_checks.problems(config) == []
    config.attack.update(lr=0.02, steps=1, num_seeds=1, clip=1.0, lam=0.0, init_log_var=-3.0)
    assert config_checks.problems(config) == []
    config = _load('celeba.py')
    config.defense.freeze_layers = 0
    assert config_checks.problems(config) == []


def test_nested_stage_configs_and_tuples_are_checked():
    demo = _load('demo.py:runlocal')
    demo.stages.attack.gmi.attack.steps = 0
    demo.stages.pretrain.optim.lr = -1.0
    demo.stages.target.defense.mid_beta = math.inf
    found = config_checks.problems(demo)
    assert 'config.stages.attack.gmi.attack.steps=0: must be an integer >= 1' in found
    assert 'config.stages.pretrain.optim.lr=-1.0: must be a finite number > 0' in found
    assert 'config.stages.target.defense.mid_beta=inf: must be a finite number >= 0' in found
    sweep = _load('sweep_celeba.py:table=paper,runlocal')
    sweep.targets.mid.overrides.defense.mid_beta = -1.0
    assert config_checks.problems(sweep) == [
        'config.targets.mid.overrides.defense.mid_beta=-1.0: must be a finite number >= 0'
    ]
    celeba = _load('celeba.py')
    celeba.defense.mid_beta_sweep = (0.01, math.nan)
    assert config_checks.problems(celeba) == [
        'config.defense.mid_beta_sweep=[0.01, nan]: every entry must be a finite number'
    ]


def test_a_run_needs_epochs_or_total_steps():
    config = _load('celeba.py')
    config.epochs, config.total_steps = 0, 0
    assert config_checks.problems(config) == [
        'config.epochs=0: must be an integer >= 1 when total_steps is 0'
    ]
    config.total_steps = 10  # PLG-MI's recipe counts steps, not epochs.
    assert config_checks.problems(config) == []


def test_prepare_checks_first_and_writes_nothing(tmp_path):
    config = _load('celeba.py:runlocal')
    config.optim.lr = math.nan
    with pytest.raises(config_checks.ConfigValueError, match='config.optim.lr=nan'):
        workdir.prepare(config, str(tmp_path / 'wd'))
    config.optim.lr = 0.1
    with pytest.raises(workdir.WorkdirError, match='--workdir is empty'):
        workdir.prepare(config, '')
    assert list(tmp_path.iterdir()) == []
