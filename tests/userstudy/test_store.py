"""The answers database: durable across SIGKILL, safe with concurrent raters, one study only."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from tldmi_jax.userstudy import store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _answer(rater, trial, position=0, choice='left'):
    return {
        'rater': rater,
        'trial': trial,
        'position': position,
        'kind': 'pair',
        'identity': 3,
        'arm_left': 'none',
        'arm_right': 'tldmi',
        'choice': choice,
        'chosen': {'left': 'none', 'right': 'tldmi', 'tie': 'tie'}[choice],
        'correct': None,
        'response_ms': 1234,
    }


def test_rater_plan_is_kept_and_never_replaced(tmp_path):
    db = store.Store(str(tmp_path), 'hash1')
    first = db.add_rater('alice', 'tok1', 7, [{'trial': 'p00000'}])
    again = db.add_rater('alice', 'tok2', 8, [{'trial': 'p00001'}])
    assert again == first and first['plan'] == [{'trial': 'p00000'}]
    assert db.rater_by_token('tok1')['rater'] == 'alice'
    assert db.rater_by_token('tok2') is None
    assert [r['rater'] for r in db.raters()] == ['alice']


def test_repeated_answer_refused_and_first_kept(tmp_path):
    db = store.Store(str(tmp_path), 'hash1')
    db.add_rater('alice', 'tok1', 7, [])
    db.record(_answer('alice', 'p00000', choice='left'))
    with pytest.raises(store.AlreadyAnswered, match="'alice' has already answered"):
        db.record(_answer('alice', 'p00000', choice='right'))
    (row,) = db.answers()
    assert row['choice'] == 'left' and row['chosen'] == 'none' and row['response_ms'] == 1234


def test_invalid_rows_refused(tmp_path):
    db = store.Store(str(tmp_path), 'hash1')
    db.add_rater('alice', 'tok1', 7, [])
    with pytest.raises(store.StoreError, match='lacks chosen'):
        db.record({k: v for k, v in _answer('alice', 'p0').items() if k != 'chosen'})
    with pytest.raises(store.StoreError, match='refused by the database'):
        db.record(_answer('bob', 'p0'))  # No such rater (foreign key).
    with pytest.raises(store.StoreError, match='refused by the database'):
        db.record({**_answer('alice', 'p0'), 'choice': 'up'})
    assert db.count() == 0


def test_database_of_another_study_refused(tmp_path):
    store.Store(str(tmp_path), 'a' * 64)
    with pytest.raises(store.StoreError, match='another study'):
        store.Store(str(tmp_path), 'b' * 64)


def test_concurrent_raters_lose_nothing(tmp_path):
    db = store.Store(str(tmp_path), 'hash1')
    raters = [f'r{i}' for i in range(6)]
    for r in raters:
        db.add_rater(r, f'tok-{r}', 0, [])
    errors = []

    def work(rater):
        try:
            for t in range(15):
                db.record(_answer(rater, f'p{t:05d}', position=t))
                try:  # A double click: refused, never stored twice.
                    db.record(_answer(rater, f'p{t:05d}', position=t, choice='right'))
                    errors.append('second answer stored')
                except store.AlreadyAnswered:
                    pass
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(r,)) for r in raters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = db.answers()
    assert len(rows) == 6 * 15
    assert all(r['choice'] == 'left' for r in rows)
    assert {r['rater']: len(db.answered(r['rater'])) for r in rows} == {r: 15 for r in raters}


_WRITER = r"""
import sys
from tldmi_jax.userstudy import store
db = store.Store(sys.argv[1], 'hash1')
db.add_rater('alice', 'tok', 0, [])
for t in range(1000):
    db.record({'rater': 'alice', 'trial': f'p{t:05d}', 'position': t, 'kind': 'pair',
               'identity': 0, 'arm_left': 'a', 'arm_right': 'b', 'choice': 'tie',
               'chosen': 'tie', 'correct': None, 'response_ms': 5})
    print(t, flush=True)  # Acknowledged only after the commit returned.
"""


def test_sigkill_loses_no_acknowledged_answer(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, '-c', _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 40:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = store.Store(str(tmp_path), 'hash1')
    stored = db.answered('alice')
    assert acknowledged >= 40
    assert {f'p{t:05d}' for t in range(acknowledged + 1)} <= stored
    # The restarted database takes new answers after the last stored one.
    db.record({**_answer('alice', 'p99999'), 'arm_left': 'a', 'arm_right': 'b'})
    assert len(db.answered('alice')) == len(stored) + 1
