"""The stage: prepare once (guarded), export and summary files, overwrite never drops answers."""

import csv
import json
import os

import pytest

from tests.userstudy import fakes
from tldmi_jax.userstudy import manifest, server, store, study
from tldmi_jax.utils import workdir as workdir_lib


@pytest.fixture
def arms(tmp_path):
    return {
        'none': fakes.attack_dir(str(tmp_path / 'attack_none')),
        'tldmi': fakes.attack_dir(str(tmp_path / 'attack_tldmi'), shade=0.1),
    }


def _answer_all(workdir, rater, choice):
    s = server.Study(workdir)
    record = s.join(rater)
    client = server.create_app(workdir).test_client()
    for item in record['plan']:
        body = {'token': record['token'], 'trial': item['trial'], 'choice': choice}
        response = client.post('/api/answer', json={**body, 'response_ms': 5})
        assert response.status_code == 201
    return record


def test_prepare_reuses_refuses_and_protects_answers(tmp_path, arms, capsys):
    workdir = str(tmp_path / 'study')
    config = fakes.config(arms)
    config.mode, config.invite = 'prepare', 'alice,bob'
    first = study.run(config, workdir)
    out = capsys.readouterr().out
    assert 'prepared the study' in out and '4 identities, 4 pair trials' in out
    token = server.Study(workdir).store.rater('alice')['token']
    assert f'alice: http://127.0.0.1:8765/t/{token}' in out
    workdir_lib.release_all()
    # Serving options are not part of the study: a rerun with them changed reuses it.
    config.port, config.invite = 9000, ''
    assert study.prepare(config, workdir)['study_hash'] == first['study_hash']
    assert 'reusing the prepared study' in capsys.readouterr().out
    workdir_lib.release_all()
    # Another study in the same workdir is refused, naming the field.
    other = fakes.config(arms, references_per_trial=1)
    with pytest.raises(workdir_lib.WorkdirError, match='study.references_per_trial: 2 -> 1'):
        study.prepare(other, workdir)
    workdir_lib.release_all()
    # Overwrite replaces a study without answers...
    other.overwrite = True
    replaced = study.prepare(other, workdir)
    assert replaced['study_hash'] != first['study_hash']
    assert len(replaced['trials'][0]['references']) == 1
    workdir_lib.release_all()
    # ... but never one with answers.
    _answer_all(workdir, 'carol', 'left')
    again = fakes.config(arms)
    again.overwrite = True
    with pytest.raises(workdir_lib.WorkdirError, match=r'with 6 answer\(s\)'):
        study.prepare(again, workdir)
    assert store.Store(workdir, replaced['study_hash']).count() == 6


def test_bad_mode_and_invite_named(tmp_path, arms):
    config = fakes.config(arms)
    config.mode = 'launch'
    with pytest.raises(ValueError, match='prepare, serve, export, summary'):
        study.run(config, str(tmp_path / 's'))
    config.mode, config.invite = 'prepare', 'ok,not ok'
    with pytest.raises(ValueError, match="'not ok' is not a rater id"):
        study.run(config, str(tmp_path / 's'))
    workdir_lib.release_all()


def test_export_and_summary(tmp_path, arms, capsys):
    workdir = str(tmp_path / 'study')
    config = fakes.config(arms)
    study.prepare(config, workdir)
    workdir_lib.release_all()
    empty = study.export(workdir)  # Before any answer: headers only.
    with open(empty['answers_csv']) as f:
        assert f.read().strip() == ','.join(store.ANSWER_FIELDS)
    alice = _answer_all(workdir, 'alice', 'left')
    _answer_all(workdir, 'bob', 'right')
    paths = study.export(workdir)
    with open(paths['answers_csv']) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and set(rows[0]) == set(store.ANSWER_FIELDS)
    by_trial = {(r['rater'], r['trial']): r for r in rows}
    for item in alice['plan']:
        row = by_trial[('alice', item['trial'])]
        assert row['arm_left'] == item['left'] and row['chosen'] == item['left']
    with open(paths['answers_json']) as f:
        exported = json.load(f)
    assert exported['study_hash'] == manifest.load(workdir)['study_hash']
    assert len(exported['answers']) == 12
    with open(paths['raters_csv']) as f:
        raters = {r['rater']: r for r in csv.DictReader(f)}
    assert raters['alice']['answered'] == '6' and raters['bob']['trials'] == '6'
    result = study.summary(workdir)
    out = os.path.join(workdir, server.RESULTS_DIR)
    with open(os.path.join(out, 'summary.json')) as f:
        assert json.load(f)['pairs'] == result['pairs']
    with open(os.path.join(out, 'chart.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(os.path.join(out, 'summary.md')) as f:
        assert 'none' in f.read()
    # Always left (or always right) passes exactly the checks whose reference was there.
    for rater in ('alice', 'bob'):
        info = result['raters'][rater]
        assert info['attention_shown'] == 2 and info['attention_passed'] == 1
        assert info['excluded'] is True
    assert result['pairs'][0]['pooled']['n'] == 0  # Both raters failed a check.
    assert 'summary.json, summary.md and chart.png' in capsys.readouterr().out
