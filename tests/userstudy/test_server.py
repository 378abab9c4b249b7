"""The study's web app through Flask's test client: the JSON API and its refusals."""

import os

import pytest

from tests.userstudy import fakes
from tldmi_jax.userstudy import manifest, server, stats


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    workdir, m = fakes.prepared(str(tmp_path_factory.mktemp('server')), attention_rate=0.5)
    app = server.create_app(workdir)
    return workdir, m, app


@pytest.fixture
def client(study):
    return study[2].test_client()


def _join(client, rater):
    response = client.post('/api/raters', json={'rater': rater})
    assert response.status_code == 200, response.json
    return response.json


def _count(study):
    return study[2].extensions['tldmi_study'].store.count()


def test_pages_and_health(study, client):
    assert client.get('/').status_code == 200
    page = client.get('/').data
    assert b'Rater id' in page and b'There are 6 pages' in page  # 4 pairs + 2 checks.
    health = client.get('/api/health').json
    assert health == {'ok': True, 'study_hash': study[1]['study_hash']}
    assert client.get('/t/not-a-token').status_code == 404
    assert client.get('/api/next/not-a-token').json == {'error': 'unknown rater token'}


def test_join_is_idempotent_and_next_trial_hides_the_arms(study, client):
    first = _join(client, 'carol')
    again = _join(client, 'carol')
    assert first['token'] == again['token'] and first['url'] == f'/t/{first["token"]}'
    assert first['total'] == 4 + 2  # 4 pair trials, round(0.5 * 4) attention checks.
    state = client.get(f'/api/next/{first["token"]}').json
    trial = state['trial']
    assert set(trial) == {'id', 'position', 'references', 'left', 'right'}
    text = str(state)
    assert 'none' not in text and 'tldmi' not in text and stats.REFERENCE not in text
    for url in [*trial['references'], trial['left'], trial['right']]:
        response = client.get(url)
        assert response.status_code == 200 and response.data[:8] == b'\x89PNG\r\n\x1a\n'
        name = url.rsplit('/', 1)[1]
        with open(os.path.join(study[0], manifest.IMAGE_DIR, name), 'rb') as f:
            assert f.read() == response.data


@pytest.mark.parametrize(
    'rater', ['', 'a b', 'x' * 65, '../etc', 7, None], ids=lambda r: repr(r)[:12]
)
def test_bad_rater_ids_refused(client, rater):
    response = client.post('/api/raters', json={'rater': rater})
    assert response.status_code == 400 and 'rater id' in response.json['error']


def test_bad_answers_refused_and_change_nothing(study, client):
    token = _join(client, 'dave')['token']
    trial = client.get(f'/api/next/{token}').json['trial']['id']
    plan = study[2].extensions['tldmi_study'].store.rater('dave')['plan']
    planned = {p['trial'] for p in plan}
    outside = next(a['id'] for a in study[1]['attention'] if a['id'] not in planned)
    good = {'token': token, 'trial': trial, 'choice': 'left', 'response_ms': 800}
    before = _count(study)
    cases = [
        ('not json', 400, 'JSON object'),
        ([1, 2], 400, 'JSON object'),
        ({**good, 'arm': 'none'}, 400, "unknown field(s) ['arm']"),
        ({k: v for k, v in good.items() if k != 'choice'}, 400, "missing field(s) ['choice']"),
        ({**good, 'choice': 'none'}, 400, 'choice must be one of'),
        ({**good, 'response_ms': -1}, 400, 'response_ms'),
        ({**good, 'response_ms': 1.5}, 400, 'response_ms'),
        ({**good, 'response_ms': True}, 400, 'response_ms'),
        ({**good, 'token': 5}, 400, 'must be strings'),
        ({**good, 'token': 'nobody'}, 404, 'unknown rater token'),
        ({**good, 'trial': 'p99999'}, 404, "unknown trial 'p99999'"),
        ({**good, 'trial': '../manifest.json'}, 404, 'unknown trial'),
        ({**good, 'trial': outside}, 400, "not in this rater's plan"),
    ]
    for body, status, message in cases:
        if isinstance(body, str):
            response = client.post('/api/answer', data=body, content_type='text/plain')
        else:
            response = client.post('/api/answer', json=body)
        assert response.status_code == status, (body, response.json)
        assert message in response.json['error'], (body, response.json)
    assert _count(study) == before
    response = client.post('/api/answer', json=good)
    assert response.status_code == 201 and response.json['answered'] == 1
    repeated = client.post('/api/answer', json={**good, 'choice': 'right'})
    assert repeated.status_code == 409 and 'already answered' in repeated.json['error']
    assert _count(study) == before + 1
    (row,) = study[2].extensions['tldmi_study'].store.answers('dave')
    assert row['choice'] == 'left' and row['response_ms'] == 800


@pytest.mark.parametrize(
    'path',
    ['/img/manifest.json', '/img/..%2Fmanifest.json', '/img/' + 'a' * 64 + '.png', '/img/x.png'],
)
def test_only_study_images_served(client, path):
    assert client.get(path).status_code == 404


def test_a_whole_plan_counts_in_the_results(study, client):
    token = _join(client, 'erin')['token']
    chosen = []
    while True:
        state = client.get(f'/api/next/{token}').json
        if state['done']:
            break
        trial = state['trial']
        response = client.post(
            '/api/answer',
            json={'token': token, 'trial': trial['id'], 'choice': 'right', 'response_ms': 10},
        )
        assert response.status_code == 201
        chosen.append(trial['id'])
    plan = study[2].extensions['tldmi_study'].store.rater('erin')['plan']
    assert chosen == [p['trial'] for p in plan]  # In plan order, each once.
    summary = client.get('/api/results').json
    rater = summary['raters']['erin']
    assert rater['answers'] == 4 and rater['attention_shown'] == 2
    # Always "right": the reference was on the right in one of the two checks.
    assert rater['attention_passed'] == 1 and rater['excluded'] is True
    counts = summary['pairs'][0]['per_rater']['erin']
    right_arms = [p['right'] for p in plan if p['kind'] == 'pair']
    assert counts['a'] == right_arms.count('none') and counts['b'] == right_arms.count('tldmi')
    page = client.get('/results')
    assert page.status_code == 200 and b'erin' in page.data
    chart = client.get('/results/chart.png')
    assert chart.status_code == 200 and chart.data[:4] == b'\x89PNG'
