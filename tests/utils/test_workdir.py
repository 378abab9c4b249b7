"""The workdir guard: same config resumes, another is refused (listing fields) or overwritten."""

import json
import os

import ml_collections
import pytest

from tldmi_jax import config_lib
from tldmi_jax.utils import workdir


def _config(**changes) -> ml_collections.ConfigDict:
    config = config_lib.runlocal_classifier(
        config_lib.classifier_config(
            dataset='synthetic',
            arch='vgg16',
            num_classes=0,
            image_size=32,
            channels=3,
            lr=0.01,
            epochs=1,
            batch_size=8,
            dont_load=('fc/.*',),
        )
    )
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split('.')
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    workdir.release_all()


def _write(path, config):
    os.makedirs(path, exist_ok=True)
    workdir.save_config(config, str(path))


def _listing(path) -> list[str]:
    """The workdir's entries besides the lock file this process holds."""
    return sorted(n for n in os.listdir(path) if n != '.lock')


def test_same_config_resumes_and_json_forms_compare_equal(tmp_path):
    config = _config()
    _write(tmp_path, config)
    (tmp_path / 'checkpoints').mkdir()
    # The file holds lists and nulls where the config has tuples and unset placeholders.
    assert json.loads((tmp_path / 'config.json').read_text())['init']['dont_load'] == ['fc/.*']
    assert json.loads((tmp_path / 'config.json').read_text())['init']['checkpoint'] is None
    workdir.prepare(_config(), str(tmp_path))
    assert (tmp_path / 'checkpoints').is_dir()
    # The overwrite flag itself is not part of the run's identity.
    workdir.prepare(_config(overwrite=True), str(tmp_path))
    assert (tmp_path / 'checkpoints').is_dir()


def test_other_config_is_refused_with_the_differing_fields(tmp_path):
    _write(tmp_path, _config())
    with pytest.raises(workdir.WorkdirError) as err:
        workdir.prepare(_config(**{'optim.lr': 0.5, 'batch_size': 4}), str(tmp_path))
    message = str(err.value)
    assert 'batch_size: 8 -> 4' in message and 'optim.lr: 0.01 -> 0.5' in message
    assert '--config.overwrite=True' in message
    assert _listing(tmp_path) == ['config.json', 'inputs.json']


def test_differences_are_capped(tmp_path):
    old = {f'k{i:02d}': i for i in range(14)}
    new = {f'k{i:02d}': -i for i in range(1, 14)}
    changes = workdir.differences(old, new, str(tmp_path))
    assert changes[0] == 'k00: 0 -> (absent)' and len(changes) == 14
    shown = workdir.format_changes(changes)
    assert shown.count('->') == workdir.MAX_LISTED and shown.endswith('... and 4 more')


def test_overwrite_deletes_the_previous_run(tmp_path):
    _write(tmp_path, _config())
    (tmp_path / 'checkpoints' / '10').mkdir(parents=True)
    (tmp_path / 'metrics.jsonl').write_text('{"step": 10}\n')
    workdir.prepare(_config(**{'optim.lr': 0.5, 'overwrite': True}), str(tmp_path))
    assert _listing(tmp_path) == []


def test_overwrite_never_deletes_a_directory_without_a_run(tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    workdir.prepare(_config(overwrite=True), str(tmp_path))
    assert (tmp_path / 'notes.txt').read_text() == 'mine'


def test_fields_a_runlocal_run_filled_in_are_not_differences(tmp_path):
    previous = {'target': {'checkpoint': str(tmp_path / 'target')}, 'augmented': 'x'}
    previous['augmented'] = f'{tmp_path / "a0"},{tmp_path / "a1"}'
    assert (
        workdir.differences(
            previous, {'target': {'checkpoint': None}, 'augmented': ''}, str(tmp_path)
        )
        == []
    )
    elsewhere = {'target': {'checkpoint': '/elsewhere/target'}}
    changes = workdir.differences(elsewhere, {'target': {'checkpoint': None}}, str(tmp_path))
    assert changes == ["target.checkpoint: '/elsewhere/target' -> null"]


def test_an_option_added_since_the_run_started_is_no_difference_at_its_default():
    """A run that started before `attack.seed_chunk` existed resumes; a set value differs."""
    previous = {'attack': {'name': 'gmi', 'steps': 300}}
    unset = {'attack': {'name': 'gmi', 'steps': 300, 'seed_chunk': None}}
    assert workdir.differences(previous, unset) == []
    chosen = {'attack': {'name': 'gmi', 'steps': 300, 'seed_chunk': 2}}
    assert workdir.differences(previous, chosen) == ['attack.seed_chunk: (absent) -> 2']
    # Removing a field still counts.
    assert workdir.differences(unset | {'extra': None}, previous) != []


def test_unreadable_config_json_is_refused_unless_overwrite(tmp_path):
    (tmp_path / 'config.json').write_text('{"seed": 0, ')
    with pytest.raises(workdir.WorkdirError, match='unreadable'):
        workdir.prepare(_config(), str(tmp_path))
    workdir.prepare(_config(overwrite=True), str(tmp_path))
    assert _listing(tmp_path) == []


def test_a_workdir_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    with pytest.raises(workdir.WorkdirError, match='workdir not writable: .*file'):
        workdir.prepare(_config(), str(blocker))

    def denied(*args, **kwargs):
        raise PermissionError(13, 'Permission denied', str(tmp_path / 'wd'))

    monkeypatch.setattr(workdir.tempfile, 'mkstemp', denied)
    with pytest.raises(
        workdir.WorkdirError, match=r'workdir not writable: .*\(Permission denied in '
    ):
        workdir.prepare(_config(), str(tmp_path / 'wd'))


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes through directory permissions')
def test_a_read_only_workdir_is_refused(tmp_path):
    (tmp_path / 'ro').mkdir(mode=0o500)
    with pytest.raises(workdir.WorkdirError, match='workdir not writable'):
        workdir.prepare(_config(), str(tmp_path / 'ro'))


def test_trainer_overwrites_a_different_run_and_trains(tmp_path):
    from tldmi_jax.train import classifier

    _write(tmp_path, _config(**{'optim.lr': 0.5}))
    (tmp_path / 'checkpoints' / '999').mkdir(parents=True)
    config = _config(overwrite=True, total_steps=2, eval_every_steps=2, log_every_steps=2)
    config.checkpoint_every_steps = 2
    final = classifier.train_and_evaluate(config, str(tmp_path))
    assert final['steps'] == 2
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
    with open(tmp_path / 'config.json') as f:
        assert json.load(f)['optim']['lr'] == 0.01
