"""Sweep tables, the plot, config-file loading and nested overrides."""

import csv

import ml_collections
import pytest

from configs import sweep_celeba
from tldmi_jax import config_lib
from tldmi_jax.pipelines import sweep
from tldmi_jax.reporting import tables


def test_rows_and_files(tmp_path):
    done = {
        'status': 'done',
        'metrics': {
            'attack/acc@1': 0.5,
            'attack/acc@1_std': 0.1,
            'attack/fid': float('nan'),
            'protocol_hash': 'abc',
        },
    }
    failed = {'status': 'failed', 'error': 'ValueError: a|b'}
    rows = [
        {
            'target': 'none',
            'defense': 'no defense',
            'trainable_params': 16_774_184,
            'target/natural_acc': 0.9,
            'attack': 'gmi',
            **tables.row(done),
        },
        {'target': 'bad', 'defense': 'x', 'attack': 'gmi', **tables.row(failed)},
    ]
    tables.write(str(tmp_path), rows)
    md = (tmp_path / 'results.md').read_text()
    assert (
        '| none | no defense | 16.77 M | 0.9000 | gmi | 0.5000 ± 0.1000 | - | - | - | abc | done |'
        in md
    )
    assert 'failed: ValueError: a/b' in md
    with open(tmp_path / 'results.csv') as f:
        read = list(csv.DictReader(f))
    assert read[0]['attack/acc@1'] == '0.5' and read[1]['status'] == 'failed'
    assert (tmp_path / 'utility_privacy.png').stat().st_size > 1000


def test_nested_overrides_and_unknown_field():
    config = ml_collections.ConfigDict({'defense': {'freeze_layers': -1, 'name': 'tldmi'}})
    sweep._apply(config, {'defense': {'freeze_layers': 26}})
    assert config.defense.freeze_layers == 26 and config.defense.name == 'tldmi'
    with pytest.raises(ValueError, match="Unknown config field 'defense.depth'"):
        sweep._apply(config, {'defense': {'depth': 3}})


def test_load_config_file_and_sweep_config(tmp_path):
    config = config_lib.load_config_file('celeba.py:arch=ir152,defense=tldmi', 'configs')
    assert config.model.arch == 'ir152' and config.defense.name == 'tldmi'
    with pytest.raises(FileNotFoundError, match='nope.py'):
        config_lib.load_config_file('nope.py', str(tmp_path))
    full = sweep_celeba.get_config()
    assert set(full.targets) == {'none', 'tldmi', 'tldmi_k33', 'tldmi_k36', 'tldmi_k39'}
    assert full.attacks == ['gmi', 'kedmi', 'kedmi+lomma', 'plgmi']


def test_ppa_rows_show_delta_eval_and_delta_face_instead_of_the_knn_distance():
    ppa = tables.row(
        {
            'status': 'done',
            'metrics': {'attack/acc@1': 0.5, 'attack/delta_eval': 35.25, 'attack/delta_face': 0.75},
        }
    )
    rows = [{'target': 'none', 'attack': 'ppa', **ppa}]
    assert tables.header(rows)[7:9] == ('delta_eval', 'delta_face')
    assert tables.cells(rows)[0][7:9] == ['35.2500', '0.7500']
    knn = [{'target': 'none', 'attack': 'gmi', **tables.row({'metrics': {'attack/knn_dist': 2.0}})}]
    assert tables.header(knn) == tables.HEADER and tables.cells(knn)[0][7] == '2.0000'


def test_top5_column_dropped_when_every_evaluation_model_has_five_classes(tmp_path):
    def cell(classes, ci=None):
        m = {'attack/acc@1': 0.5, 'attack/acc@5': 1.0, 'attack/num_classes': classes}
        if ci is not None:
            m['attack/acc@1_ci95'] = ci
        return {
            'target': f't{classes}',
            'attack': 'gmi',
            'target/natural_acc': 0.9,
            **tables.row({'status': 'done', 'metrics': m}),
        }

    five = [cell(5, 0.1), cell(5, 0.05)]
    assert 'acc@5' not in tables.header(five)
    assert len(tables.cells(five)[0]) == len(tables.header(five)) == len(tables.HEADER) - 1
    assert 'acc@5' in tables.header([*five, cell(1000)])
    assert 'acc@5' in tables.header([{'attack': 'gmi', **tables.row({'metrics': {}})}])
    tables.write(str(tmp_path), five)  # The plot draws the interval bars.
    assert (tmp_path / 'utility_privacy.png').stat().st_size > 1000
    with open(tmp_path / 'results.csv') as f:
        assert next(csv.DictReader(f))['attack/acc@1_ci95'] == '0.1'
