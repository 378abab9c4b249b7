"""The study's web server (Flask): trial pages, one JSON endpoint for answers, the results.

Routes:

* `GET /`: the welcome page; a rater enters an id (`POST /api/raters {"rater": id}` answers
  with the rater's link, `/t/<token>`; the same id always gets the same link and plan).
* `GET /t/<token>`: the trial page; `GET /api/next/<token>` gives the next unanswered trial
  (image URLs only: the page never learns which arm is which).
* `POST /api/answer {"token", "trial", "choice": "left"|"right"|"tie", "response_ms"}`:
  stores one answer. Malformed bodies, unknown fields, tokens or trials, trials outside the
  rater's plan and repeated answers get a 4xx with `{"error": message}` and change nothing.
* `GET /img/<sha256>.png`: an image of the prepared study; names are checked against the
  manifest, so no path from a client is ever opened.
* `GET /results`, `/results/chart.png`, `/api/results`: the summary (`stats.summarize`) as a
  page, a bar chart and JSON.
* `GET /api/health`: `{"ok": true, "study_hash": ...}`.

`serve(workdir, host, port)` runs the app with Werkzeug's threaded server (127.0.0.1 by
default). The app is a plain WSGI app (`create_app`), so a lab can also put it behind any
WSGI server.
"""

import os
import re
import secrets
import threading
from collections.abc import Mapping
from typing import Any

import flask
from werkzeug import exceptions, serving

from tldmi_jax.userstudy import manifest as manifest_lib
from tldmi_jax.userstudy import stats, store, trials

WEB = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'web')
RATER_ID = re.compile(r'[A-Za-z0-9_.@-]{1,64}')
IMAGE_NAME = re.compile(r'[0-9a-f]{64}\.png')
MAX_RESPONSE_MS = 24 * 3600 * 1000
ANSWER_KEYS = frozenset({'token', 'trial', 'choice', 'response_ms'})
RESULTS_DIR = 'results'


def _fail(status: int, message: str) -> flask.Response:
    response = flask.jsonify({'error': message})
    response.status_code = status
    return response


def results_rows(summary: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """The pooled and per-rater table rows of the results page, as display strings."""
    pooled, per_rater = [], []
    for pair in summary['pairs']:
        a, b = pair['arms']
        name = f'{a} vs {b}'
        c = pair['pooled']
        pooled.append(
            {
                'pair': name,
                'a': c['a'],
                'b': c['b'],
                'ties': c['ties'],
                'share': stats.format_share(c),
            }
            | {'p': stats.format_p(c['p_value'])}
        )
        for rater, c in sorted(pair['per_rater'].items()):
            info = summary['raters'][rater]
            acc = info['attention_accuracy']
            per_rater.append(
                {
                    'rater': rater,
                    'pair': name,
                    'a': c['a'],
                    'b': c['b'],
                    'ties': c['ties'],
                    'share': stats.format_share(c),
                    'attention': '-'
                    if acc is None
                    else f'{info["attention_passed"]}/{info["attention_shown"]}',
                    'excluded': 'yes' if info['excluded'] else 'no',
                }
            )
    return pooled, per_rater


class Study:
    """A prepared study and its answers database, as the server uses them."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.manifest = manifest_lib.load(workdir)
        manifest_lib.verify(workdir, self.manifest)
        self.store = store.Store(workdir, self.manifest['study_hash'])
        self.trials = manifest_lib.trial_index(self.manifest)
        self.arms = [a['name'] for a in self.manifest['arms']]
        self._chart_lock = threading.Lock()

    def join(self, rater: str) -> dict[str, Any]:
        """The rater's record, made (with its seeded plan) on the first visit."""
        found = self.store.rater(rater)
        if found is not None:
            return found
        seed = trials.rater_seed(self.manifest['study_hash'], rater)
        plan = trials.plan(self.manifest, seed, self.manifest['attention_rate'])
        return self.store.add_rater(rater, secrets.token_urlsafe(12), seed, plan)

    def summary(self) -> dict[str, Any]:
        return stats.summarize(
            self.store.answers(), self.arms, min_attention=self.manifest['min_attention']
        )

    def chart(self) -> bytes:
        """The PNG bar chart of the current answers (redrawn when their number changed)."""
        directory = os.path.join(self.workdir, RESULTS_DIR)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f'chart_{self.store.count()}.png')
        with self._chart_lock:
            if not os.path.exists(path):
                for old in os.listdir(directory):
                    if old.startswith('chart_') and old.endswith('.png'):
                        os.remove(os.path.join(directory, old))
                stats.bar_chart(self.summary(), path)
            with open(path, 'rb') as f:
                return f.read()

    @property
    def trials_per_rater(self) -> int:
        """Pair trials plus the attention checks each rater gets."""
        pairs, pool = len(self.manifest['trials']), len(self.manifest.get('attention', []))
        return pairs + trials.num_attention(pairs, self.manifest['attention_rate'], pool)


def _image_url(name: str) -> str:
    return flask.url_for('image', name=name)


def _state(study: Study, rater: Mapping[str, Any]) -> dict[str, Any]:
    """Progress and the next unanswered trial of `rater` (image URLs, no arm names)."""
    plan = rater['plan']
    answered = study.store.answered(rater['rater'])
    state: dict[str, Any] = {'answered': len(answered), 'total': len(plan), 'done': True}
    for position, item in enumerate(plan):
        if item['trial'] in answered:
            continue
        trial = study.trials[item['trial']]
        state['done'] = False
        state['trial'] = {
            'id': item['trial'],
            'position': position,
            'references': [_image_url(n) for n in trial['references']],
            'left': _image_url(trial['options'][item['left']]),
            'right': _image_url(trial['options'][item['right']]),
        }
        break
    return state


def _parse_answer(study: Study, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validates an answer body; returns `(rater, answer row)` or raises BadRequest/NotFound."""
    if not isinstance(body, dict):
        raise exceptions.BadRequest('the body must be a JSON object')
    unknown = sorted(set(body) - ANSWER_KEYS)
    missing = sorted(ANSWER_KEYS - set(body))
    if unknown or missing:
        parts = [f'unknown field(s) {unknown}'] if unknown else []
        parts += [f'missing field(s) {missing}'] if missing else []
        raise exceptions.BadRequest('; '.join(parts) + f'; expected {sorted(ANSWER_KEYS)}')
    token, trial_id, choice, ms = (body[k] for k in ('token', 'trial', 'choice', 'response_ms'))
    if not isinstance(token, str) or not isinstance(trial_id, str):
        raise exceptions.BadRequest('token and trial must be strings')
    if choice not in store.CHOICES:
        raise exceptions.BadRequest(f'choice must be one of {list(store.CHOICES)}')
    if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= MAX_RESPONSE_MS:
        raise exceptions.BadRequest(f'response_ms must be an integer in [0, {MAX_RESPONSE_MS}]')
    rater = study.store.rater_by_token(token)
    if rater is None:
        raise exceptions.NotFound('unknown rater token')
    if trial_id not in study.trials:
        raise exceptions.NotFound(f'unknown trial {trial_id!r}')
    positions = [i for i, item in enumerate(rater['plan']) if item['trial'] == trial_id]
    if not positions:
        raise exceptions.BadRequest(f"trial {trial_id!r} is not in this rater's plan")
    item = rater['plan'][positions[0]]
    chosen = {'left': item['left'], 'right': item['right'], 'tie': 'tie'}[choice]
    trial = study.trials[trial_id]
    return rater, {
        'rater': rater['rater'],
        'trial': trial_id,
        'position': positions[0],
        'kind': trial['kind'],
        'identity': trial['identity'],
        'arm_left': item['left'],
        'arm_right': item['right'],
        'choice': choice,
        'chosen': chosen,
        'correct': int(chosen == stats.REFERENCE) if trial['kind'] == 'attention' else None,
        'response_ms': ms,
    }


def create_app(workdir: str) -> flask.Flask:
    """The WSGI app of the study prepared in `workdir`.

    Raises:
      FileNotFoundError, StudyError, StoreError: no prepared study, a damaged one, or a
        database of another study.
    """
    study = Study(workdir)
    app = flask.Flask(__name__, template_folder=WEB, static_folder=WEB, static_url_path='/static')
    app.json.sort_keys = False
    title = study.manifest['title']
    image_dir = os.path.join(workdir, manifest_lib.IMAGE_DIR)
    app.extensions['tldmi_study'] = study

    @app.errorhandler(exceptions.HTTPException)
    def http_error(error: exceptions.HTTPException):
        if flask.request.path.startswith('/api/'):
            return _fail(error.code or 500, error.description or error.name)
        return error

    @app.get('/')
    def index():
        return flask.render_template('index.html', title=title, total=study.trials_per_rater)

    @app.post('/api/raters')
    def join():
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict) or set(body) != {'rater'}:
            return _fail(400, 'the body must be {"rater": "<id>"}')
        rater_id = body['rater']
        if not isinstance(rater_id, str) or not RATER_ID.fullmatch(rater_id):
            return _fail(400, 'a rater id is 1-64 letters, digits or _ . @ -')
        rater = study.join(rater_id)
        state = _state(study, rater)
        url = flask.url_for('trial_page', token=rater['token'])
        return flask.jsonify(
            {'rater': rater_id, 'token': rater['token'], 'url': url}
            | {k: state[k] for k in ('answered', 'total', 'done')}
        )

    @app.get('/t/<token>')
    def trial_page(token: str):
        if study.store.rater_by_token(token) is None:
            flask.abort(404, 'unknown rater link')
        size = study.manifest.get('display_size', 192)
        return flask.render_template(
            'trial.html',
            title=title,
            question=study.manifest['question'],
            token=token,
            ref_size=int(size * 0.66),
            option_size=size,
        )

    @app.get('/api/next/<token>')
    def next_trial(token: str):
        rater = study.store.rater_by_token(token)
        if rater is None:
            return _fail(404, 'unknown rater token')
        return flask.jsonify(_state(study, rater))

    @app.post('/api/answer')
    def answer():
        rater, row = _parse_answer(study, flask.request.get_json(silent=True))
        try:
            study.store.record(row)
        except store.AlreadyAnswered as e:
            return _fail(409, str(e))
        state = _state(study, rater)
        return flask.jsonify({'ok': True} | state), 201

    @app.get('/img/<name>')
    def image(name: str):
        if not IMAGE_NAME.fullmatch(name) or name not in study.manifest['images']:
            flask.abort(404)
        response = flask.send_from_directory(image_dir, name, mimetype='image/png')
        response.headers['Cache-Control'] = 'private, max-age=86400, immutable'
        return response

    @app.get('/api/results')
    def results_json():
        return flask.jsonify(study.summary())

    @app.get('/results')
    def results():
        summary = study.summary()
        pooled, per_rater = results_rows(summary)
        return flask.render_template(
            'results.html',
            title=title,
            answers=study.store.count(),
            raters=len(summary['raters']),
            study_hash=study.manifest['study_hash'],
            min_attention=summary['min_attention'],
            level_pct=round(100 * summary['level']),
            pooled=pooled,
            per_rater=per_rater,
        )

    @app.get('/results/chart.png')
    def chart():
        response = flask.Response(study.chart(), mimetype='image/png')
        response.headers['Cache-Control'] = 'no-store'
        return response

    @app.get('/api/health')
    def health():
        return flask.jsonify({'ok': True, 'study_hash': study.manifest['study_hash']})

    return app


def serve(workdir: str, host: str, port: int) -> None:
    """Serves the study in `workdir` on http://host:port/ until interrupted (Ctrl-C)."""
    app = create_app(workdir)
    server = serving.make_server(host, port, app, threaded=True)
    url = f'http://{host}:{server.server_port}/'
    print(f'Serving the study on {url} (results: {url}results); Ctrl-C stops.', flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
