"""The study's answers: one SQLite database in the workdir, safe against kills and concurrency.

`answers.sqlite` holds three tables:

* `meta`: the study hash the database belongs to (a database is never reused for another
  study);
* `raters`: id, link token, seed and the stored trial plan (JSON) of every rater;
* `answers`: one row per (rater, trial): the trial's kind and identity, both arms as shown
  (left, right), the choice (`left`/`right`/`tie`), the chosen arm, whether an attention check
  was passed, the response time and when it was answered.

The database runs in WAL mode with `synchronous=FULL`, and every answer is one `BEGIN
IMMEDIATE` transaction: an answer acknowledged to the browser is on disk, so a server killed
with SIGKILL and restarted has lost nothing. Each call opens its own connection, so any
number of server threads (and an `export` in another process) can use it at once; a second
answer to the same trial is refused by the primary key, never stored twice.
"""

import contextlib
import datetime
import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

FILENAME = 'answers.sqlite'
CHOICES = ('left', 'right', 'tie')
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
  rater TEXT PRIMARY KEY,
  token TEXT UNIQUE NOT NULL,
  seed INTEGER NOT NULL,
  plan TEXT NOT NULL,
  created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
  rater TEXT NOT NULL REFERENCES raters(rater),
  trial TEXT NOT NULL,
  position INTEGER NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('pair', 'attention')),
  identity INTEGER NOT NULL,
  arm_left TEXT NOT NULL,
  arm_right TEXT NOT NULL,
  choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
  chosen TEXT NOT NULL,
  correct INTEGER,
  response_ms INTEGER NOT NULL CHECK (response_ms >= 0),
  answered_at TEXT NOT NULL,
  PRIMARY KEY (rater, trial)
);
"""
ANSWER_FIELDS = (
    'rater',
    'trial',
    'position',
    'kind',
    'identity',
    'arm_left',
    'arm_right',
    'choice',
    'chosen',
    'correct',
    'response_ms',
    'answered_at',
)


class StoreError(ValueError):
    """The database belongs to another study, or a write breaks a rule (message says which)."""


class AlreadyAnswered(StoreError):
    """The rater has already answered this trial; nothing was changed."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec='milliseconds')


class Store:
    """The answers database of one study."""

    def __init__(self, workdir: str, study_hash: str):
        """Opens (creating) `workdir/answers.sqlite` for the study `study_hash`.

        Raises:
          StoreError: the database was made for another study.
        """
        self.path = os.path.join(workdir, FILENAME)
        with self._connect() as db:
            db.execute('PRAGMA journal_mode=WAL')
            db.executescript(_SCHEMA)
            db.execute(
                'INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)', ('study', study_hash)
            )
            (found,) = db.execute("SELECT value FROM meta WHERE key = 'study'").fetchone()
        if found != study_hash:
            raise StoreError(
                f'{self.path} holds the answers of another study ({found[:12]}, this one is '
                f'{study_hash[:12]}); a prepared study never changes: use another --workdir'
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute('PRAGMA synchronous=FULL')
            db.execute('PRAGMA foreign_keys=ON')
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute('BEGIN IMMEDIATE')
            try:
                yield db
            except BaseException:
                db.execute('ROLLBACK')
                raise
            db.execute('COMMIT')

    # --- raters ---

    def add_rater(self, rater: str, token: str, seed: int, plan: list[dict]) -> dict[str, Any]:
        """Registers `rater` (or returns the existing record: a plan is never replaced)."""
        with self._transaction() as db:
            db.execute(
                'INSERT OR IGNORE INTO raters (rater, token, seed, plan, created) '
                'VALUES (?, ?, ?, ?, ?)',
                (rater, token, seed, json.dumps(plan), _now()),
            )
        found = self.rater(rater)
        assert found is not None
        return found

    def rater(self, rater: str) -> dict[str, Any] | None:
        """The rater's record (`plan` decoded), or None."""
        return self._rater('rater', rater)

    def rater_by_token(self, token: str) -> dict[str, Any] | None:
        """The record of the rater with this link token, or None."""
        return self._rater('token', token)

    def _rater(self, column: str, value: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(f'SELECT * FROM raters WHERE {column} = ?', (value,)).fetchone()
        if row is None:
            return None
        record = dict(row)
        record['plan'] = json.loads(record['plan'])
        return record

    def raters(self) -> list[dict[str, Any]]:
        """Every rater, in order of registration (plans decoded)."""
        with self._connect() as db:
            rows = db.execute('SELECT * FROM raters ORDER BY created, rater').fetchall()
        return [{**dict(r), 'plan': json.loads(r['plan'])} for r in rows]

    # --- answers ---

    def record(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Stores one answer (every field of `ANSWER_FIELDS` but `answered_at`).

        Returns:
          The stored row.

        Raises:
          AlreadyAnswered: the rater already answered that trial (the first answer stays).
          StoreError: a field is missing or invalid.
        """
        row = {**answer, 'answered_at': _now()}
        missing = [k for k in ANSWER_FIELDS if k not in row]
        if missing:
            raise StoreError(f'answer lacks {", ".join(missing)}')
        try:
            with self._transaction() as db:
                db.execute(
                    f'INSERT INTO answers ({", ".join(ANSWER_FIELDS)}) '
                    f'VALUES ({", ".join("?" for _ in ANSWER_FIELDS)})',
                    [row[k] for k in ANSWER_FIELDS],
                )
        except sqlite3.IntegrityError as e:
            if 'UNIQUE' in str(e) or 'PRIMARY' in str(e):
                raise AlreadyAnswered(
                    f'rater {row["rater"]!r} has already answered trial {row["trial"]!r}'
                ) from e
            raise StoreError(f'answer refused by the database: {e}') from e
        return row

    def answers(self, rater: str | None = None) -> list[dict[str, Any]]:
        """Stored answers (of one rater, or all), in the order they were given."""
        query = 'SELECT * FROM answers'
        args: tuple = ()
        if rater is not None:
            query, args = query + ' WHERE rater = ?', (rater,)
        with self._connect() as db:
            rows = db.execute(query + ' ORDER BY answered_at, rater, position', args).fetchall()
        return [dict(r) for r in rows]

    def answered(self, rater: str) -> set[str]:
        """The trial ids `rater` has answered."""
        with self._connect() as db:
            rows = db.execute('SELECT trial FROM answers WHERE rater = ?', (rater,)).fetchall()
        return {r[0] for r in rows}

    def count(self) -> int:
        """The number of stored answers."""
        with self._connect() as db:
            return db.execute('SELECT COUNT(*) FROM answers').fetchone()[0]
