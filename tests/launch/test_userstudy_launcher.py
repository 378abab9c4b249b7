"""launch/userstudy.py end to end: runlocal preparation, then two raters in a real browser.

The server runs as its own process (as a researcher runs it), is killed with SIGKILL in the
middle of the study and restarted; the raters reload and close their pages on the way. The
database, the CSV export, the summary and the /results page are checked afterwards.
`UPDATE_DOCS_SCREENSHOTS=1` also copies the two screenshots into docs/.
"""

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

from tests import browser
from tests.launch import in_process
from tldmi_jax.utils import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, 'launch', 'userstudy.py')
CONFIG = os.path.join(ROOT, 'configs', 'userstudy.py') + ':runlocal'
TRIALS = 8 + 2  # 4 identities x 2 seeds, one pair of arms; round(0.25 * 8) attention checks.


def _launch(workdir, *flags, timeout=600):
    cmd = [sys.executable, LAUNCHER, f'--config={CONFIG}', f'--workdir={workdir}', *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _call(capsys, workdir, *flags):
    """The launcher in this process (no interpreter start-up); returns its stdout."""
    argv = [f'--config={CONFIG}', f'--workdir={workdir}', *flags]
    status = in_process.call_launcher('userstudy', argv)
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    return out


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    """The runlocal study, prepared by the launcher in this process (the server, below, is a
    process of its own)."""
    workdir = str(tmp_path_factory.mktemp('userstudy') / 'study')
    argv = [f'--config={CONFIG}', f'--workdir={workdir}', '--config.mode=prepare']
    with pytest.MonkeyPatch.context() as mp:
        out = []
        mp.setattr(sys, 'stdout', _Tee(out))
        assert in_process.call_launcher('userstudy', argv) == 0
    return workdir, ''.join(out)


class _Tee:
    """Collects what is printed (a module fixture cannot use capsys)."""

    def __init__(self, out):
        self.out = out

    def write(self, text):
        self.out.append(text)
        return len(text)

    def flush(self):
        pass


def test_runlocal_prepares_a_study_over_two_tiny_attacks(prepared, capsys):
    workdir, out = prepared
    assert 'prepared the study' in out and 'arms seed0, seed1' in out
    with open(os.path.join(workdir, 'study', 'manifest.json')) as f:
        manifest = json.load(f)
    assert [a['attack'] for a in manifest['arms']] == ['gmi', 'gmi']
    for arm in manifest['arms']:
        assert arm['attack_dir'] == os.path.join(workdir, 'runlocal', 'arms', arm['name'])
    assert len(manifest['trials']) == 8 and len(manifest['attention']) == 4
    # A rerun (the same command) reuses the study and trains nothing.
    again = _call(capsys, workdir, '--config.mode=prepare')
    assert 'reusing the prepared study' in again and manifest['study_hash'][:12] in again


class _Server:
    """`launch/userstudy.py --config.mode=serve` in its own process."""

    def __init__(self, workdir):
        self.workdir, self.port = workdir, browser.free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.proc = None

    def start(self):
        cmd = [sys.executable, LAUNCHER, f'--config={CONFIG}', f'--workdir={self.workdir}']
        cmd += ['--config.mode=serve', f'--config.port={self.port}']
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()[-3000:]
            try:
                with urllib.request.urlopen(f'{self.url}/api/health', timeout=2) as r:
                    return json.load(r)
            except OSError:
                time.sleep(0.3)
        raise AssertionError('the study server did not answer within 120 s')

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stderr.close()


def _counter(page):
    return page.inner_text('#counter')


def _answer(page, careful, index):
    """Answers the trial on screen: `careful` picks a reference photo when one is offered."""
    page.wait_for_selector('#trial:not([hidden])')
    page.wait_for_function("() => !document.getElementById('study').classList.contains('busy')")
    refs = page.eval_on_selector_all('#refs img', 'imgs => imgs.map((i) => i.src)')
    left = page.eval_on_selector('#left img', 'img => img.src')
    right = page.eval_on_selector('#right img', 'img => img.src')
    before = _counter(page)
    if careful and (left in refs or right in refs):
        choice = 'left' if left in refs else 'right'
    else:
        choice = 'left' if not careful else ('left', 'right', 'tie')[index % 3]
    if index % 2:  # Keys and clicks both.
        page.keyboard.press(
            {'left': 'ArrowLeft', 'right': 'ArrowRight', 'tie': 'ArrowDown'}[choice]
        )
    else:
        page.click(f'#{choice}')
    page.wait_for_function("t => document.getElementById('counter').textContent !== t", arg=before)
    return choice


def _join(context, url, rater):
    page = context.new_page()
    page.goto(url)
    page.fill('#rater', rater)
    page.click('#start')
    page.wait_for_url('**/t/*')
    page.wait_for_selector('#counter:not(:empty)')
    return page


def test_two_raters_in_a_browser_through_a_server_kill(prepared, capsys):
    workdir, _ = prepared
    server = _Server(workdir)
    health = server.start()
    try:
        with browser.browser() as chromium:
            alice_ctx = chromium.new_context(viewport={'width': 1000, 'height': 800})
            alice = _join(alice_ctx, server.url, 'alice')
            assert _counter(alice) == f'0 of {TRIALS} answered'
            browser.screenshot(alice, 'userstudy_trial.png')
            for i in range(4):
                _answer(alice, True, i)
            alice.reload()  # Progress survives a reload...
            alice.wait_for_selector('#counter:not(:empty)')
            assert _counter(alice) == f'4 of {TRIALS} answered'
            server.kill()  # ... and a SIGKILL of the server.
            assert server.start() == health
            alice.reload()
            alice.wait_for_selector('#counter:not(:empty)')
            assert _counter(alice) == f'4 of {TRIALS} answered'
            for i in range(4, TRIALS):
                _answer(alice, True, i)
            alice.wait_for_selector('#done:not([hidden])')

            bob_ctx = chromium.new_context()
            bob = _join(bob_ctx, server.url, 'bob')
            for i in range(3):
                _answer(bob, False, i)
            bob_ctx.close()  # Bob closes the tab and comes back with his id.
            bob = _join(chromium.new_context(), server.url, 'bob')
            assert _counter(bob) == f'3 of {TRIALS} answered'
            for i in range(3, TRIALS):
                _answer(bob, False, i)
            bob.wait_for_selector('#done:not([hidden])')

            results = alice_ctx.new_page()
            results.goto(f'{server.url}/results')
            results.wait_for_load_state('load')
            assert browser.broken_images(results) == []
            assert 'seed0 vs seed1' in results.inner_text('#pooled')
            per_rater = results.inner_text('#per-rater')
            assert 'alice' in per_rater and 'bob' in per_rater
            browser.screenshot(results, 'userstudy_results.png')
    finally:
        server.kill()

    with sqlite3.connect(os.path.join(workdir, 'answers.sqlite')) as db:
        rows = db.execute(
            'SELECT rater, kind, choice, correct, response_ms FROM answers'
        ).fetchall()
    assert sorted(r[0] for r in rows) == ['alice'] * TRIALS + ['bob'] * TRIALS
    alice_checks = [r[3] for r in rows if r[0] == 'alice' and r[1] == 'attention']
    bob_checks = [r[3] for r in rows if r[0] == 'bob' and r[1] == 'attention']
    assert alice_checks == [1, 1] and sorted(bob_checks) == [0, 1]  # Bob always clicks left.
    assert all(r[4] >= 0 for r in rows)

    _call(capsys, workdir, '--config.mode=export')
    with open(os.path.join(workdir, 'export', 'answers.csv')) as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == 2 * TRIALS
    out = _call(capsys, workdir, '--config.mode=summary')
    with open(os.path.join(workdir, 'results', 'summary.json')) as f:
        summary = json.load(f)
    assert summary['excluded_raters'] == ['bob'] and 'bob' in out
    pooled = summary['pairs'][0]['pooled']
    alice_pairs = [r for r in rows if r[0] == 'alice' and r[1] == 'pair']
    assert pooled['ties'] == sum(r[2] == 'tie' for r in alice_pairs)
    assert pooled['n'] == len(alice_pairs) - pooled['ties']
    assert workdir_lib.foreign_entries(workdir) == []  # overwrite could replace every entry.
    if os.environ.get('UPDATE_DOCS_SCREENSHOTS'):
        for name in ('userstudy_trial.png', 'userstudy_results.png'):
            shutil.copy(os.path.join(browser.ARTIFACTS, name), os.path.join(ROOT, 'docs', name))
