"""Input fingerprints: what defines an input, and a resumed run refusing a changed one.

A resumed attack whose target was retrained: tests/launch/test_hardening.py.
"""

import json
import os

import ml_collections
import numpy as np
import pytest

from tldmi_jax.utils import atomic, fingerprint, workdir


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    workdir.release_all()


def _model(path, value: float) -> str:
    from tldmi_jax.utils import checkpoint

    checkpoint.save_model(str(path), {'fc': {'kernel': np.full((2, 2), value, np.float32)}}, {})
    return str(path)


def test_input_fields_are_found_at_any_depth():
    flat = {
        'target.checkpoint': '/t',
        'prior.checkpoint': None,
        'init.checkpoints.efficientnet_b0': '/b0',
        'augmented.checkpoints': '/a0, /a1',
        'attack_dir': '/att',
        'fid.inception_checkpoint': '',
        'targets.none.checkpoint': '/row',
        'stages.attack.gmi.target.checkpoint': '/nested',
        'stage_overrides.train.init.checkpoint': '/init',
        'target.checkpoint_every_steps': 5,
        'data.root': '/data',
    }
    assert fingerprint.input_paths(flat) == {
        'attack_dir': ['/att'],
        'augmented.checkpoints': ['/a0', '/a1'],
        'init.checkpoints.efficientnet_b0': ['/b0'],
        'stage_overrides.train.init.checkpoint': ['/init'],
        'stages.attack.gmi.target.checkpoint': ['/nested'],
        'target.checkpoint': ['/t'],
        'targets.none.checkpoint': ['/row'],
    }


def test_the_files_the_loaders_would_read(tmp_path):
    run = tmp_path / 'run'  # A trainer workdir: model_best wins over model_final.
    _model(run / 'model_final', 1.0)
    _model(run / 'model_best', 2.0)
    (run / 'metrics.jsonl').write_text('{}\n')
    root, files = fingerprint.defining_files(str(run))
    assert root == str(run / 'model_best') and '.tldmi_jax' not in files and files
    before = fingerprint.fingerprint(str(run))
    (run / 'metrics.jsonl').write_text('{"step": 1}\n')  # Not part of the model.
    (run / 'model_best' / '.lock').write_text('1')
    assert fingerprint.fingerprint(str(run)) == before
    (run / 'model_best' / '.lock').unlink()
    _model(run / 'model_best', 3.0)  # Retrained in place.
    assert fingerprint.fingerprint(str(run)) != before

    attack = tmp_path / 'attack'
    attack.mkdir()
    for name in ('reconstructions.npz', 'attack.json', 'metrics.jsonl'):
        (attack / name).write_text(name)
    assert fingerprint.defining_files(str(attack)) == (
        str(attack),
        ['reconstructions.npz', 'attack.json'],
    )
    gan = tmp_path / 'gan'
    (gan / 'prior').mkdir(parents=True)
    (gan / 'prior' / 'prior.json').write_text('{}')
    (gan / 'metrics.jsonl').write_text('{}')
    assert fingerprint.defining_files(str(gan)) == (str(gan / 'prior'), ['prior.json'])
    other = tmp_path / 'other'
    atomic.write_text(str(other / 'sub' / 'w.bin'), 'x')
    (other / '.w.bin.abcd.tmp').write_text('partial')
    assert fingerprint.defining_files(str(other)) == (str(other), [os.path.join('sub', 'w.bin')])
    assert fingerprint.fingerprint(str(tmp_path / 'nowhere')) == 'missing'


def _config(target: str, overwrite: bool = False) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {'seed': 0, 'overwrite': overwrite, 'target': {'checkpoint': target}}
    )


def test_a_changed_input_is_refused_unless_overwrite(tmp_path):
    target = _model(tmp_path / 'target', 1.0)
    wd = str(tmp_path / 'wd')
    workdir.prepare(_config(target), wd)
    workdir.save_config(_config(target), wd)
    recorded = json.loads((tmp_path / 'wd' / 'inputs.json').read_text())
    assert recorded['workdir'] == wd
    assert recorded['inputs']['target.checkpoint'][0]['path'] == target
    (tmp_path / 'wd' / 'results.json').write_text('{}')
    workdir.prepare(_config(target), wd)  # Unchanged: resumes.
    workdir.save_config(_config(target), wd)
    assert (tmp_path / 'wd' / 'results.json').exists()

    _model(tmp_path / 'target', 5.0)  # Retrained in place.
    workdir.prepare(_config(target), wd)
    with pytest.raises(workdir.WorkdirError) as err:
        workdir.save_config(_config(target), wd)
    message = str(err.value)
    assert f'input changed since the run started: target.checkpoint ({target})' in message
    assert '--config.overwrite=True' in message and 'Restore the input' in message
    assert (tmp_path / 'wd' / 'results.json').exists()  # Nothing deleted.

    workdir.prepare(_config(target, overwrite=True), wd)
    workdir.save_config(_config(target, overwrite=True), wd)
    assert sorted(os.listdir(wd)) == ['.lock', 'config.json', 'inputs.json']
    workdir.prepare(_config(target), wd)  # Recorded anew: resumes.
    workdir.save_config(_config(target), wd)


def test_overwrite_keeps_inputs_made_inside_the_workdir(tmp_path):
    wd = tmp_path / 'wd'
    target = _model(wd / 'target', 1.0)  # A runlocal stand-in under the workdir.
    workdir.save_config(_config(target), str(wd))
    (wd / 'batches').mkdir()
    other = _model(tmp_path / 'elsewhere', 2.0)
    config = _config(target, overwrite=True)
    config.prior = {'checkpoint': other}
    workdir.save_config(config, str(wd))  # A new input field: recorded, not compared.
    _model(tmp_path / 'elsewhere', 3.0)
    workdir.save_config(config, str(wd))
    assert sorted(os.listdir(wd)) == ['.lock', 'config.json', 'inputs.json', 'target']


def test_a_moved_workdir_compares_its_own_paths_as_moved(tmp_path):
    started = str(tmp_path / 'a' / 'sweep' / 'cells' / 'x' / 'attack')
    now = str(tmp_path / 'b' / 'sweep2' / 'cells' / 'x' / 'attack')
    previous = {
        'target': {'checkpoint': str(tmp_path / 'a' / 'sweep' / 'targets' / 'none')},
        'prior': {'checkpoint': started + '/prior'},
        'augmented': {'checkpoints': f'{started}/s0,{started}/s1'},
        'data': {'root': '/data'},
    }
    current = {
        'target': {'checkpoint': str(tmp_path / 'b' / 'sweep2' / 'targets' / 'none')},
        'prior': {'checkpoint': None},  # Made by the run (runlocal): unset on the command line.
        'augmented': {'checkpoints': f'{now}/s0,{now}/s1'},
        'data': {'root': '/data'},
    }
    assert workdir.differences(previous, current, now, started) == []
    assert workdir.differences(previous, current, now) != []  # Without knowing the move.
    current['data']['root'] = '/other'
    assert workdir.differences(previous, current, now, started) == [
        "data.root: '/data' -> '/other'"
    ]
