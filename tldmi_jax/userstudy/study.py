"""The user-study stage: prepare a study, serve it, export its answers, summarise them.

`run(config, workdir)` does what `config.mode` says:

* `prepare`: freezes the study (`manifest.prepare`: images + manifest) once, creates the
  answers database and prints the links of the raters named in `config.invite`. Rerun with
  the same config it reuses the study; with another config it is refused (the workdir
  guard lists the differing fields). `overwrite` replaces a study only while it has no
  answers: answers are never deleted by this library.
* `serve`: `prepare`, then the web server (`server.serve`) until Ctrl-C.
* `export`: `export/answers.csv`, `export/answers.json` and `export/raters.csv`.
* `summary`: `results/summary.json`, `results/summary.md` and `results/chart.png`, and the
  pooled table on stdout.

`export` and `summary` only read the database and write their own files atomically, so
they run while the server is serving the same workdir.
"""

import os
from typing import Any

import ml_collections

from tldmi_jax.reporting import files
from tldmi_jax.userstudy import manifest as manifest_lib
from tldmi_jax.userstudy import server, stats, store
from tldmi_jax.utils import atomic
from tldmi_jax.utils import workdir as workdir_lib

MODES = ('prepare', 'serve', 'export', 'summary')
EXPORT_DIR = 'export'


def _check_mode(config: ml_collections.ConfigDict) -> None:
    if config.mode not in MODES:
        raise ValueError(f'config.mode={config.mode!r}: use one of {", ".join(MODES)}')


def _answer_count(workdir: str) -> int:
    """Answers stored in `workdir` (0 when there is no prepared study or database)."""
    if not os.path.exists(os.path.join(workdir, store.FILENAME)) or not manifest_lib.exists(
        workdir
    ):
        return 0
    study_hash = manifest_lib.load(workdir)['study_hash']
    return store.Store(workdir, study_hash).count()


def prepare(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Prepares the study in `workdir` (or checks and reuses it); returns the manifest.

    Raises:
      WorkdirError: the workdir holds another study (fields listed), or overwrite was asked
        for a study that has answers.
      StudyError, DataError, FileNotFoundError: see `manifest.prepare`.
    """
    _check_mode(config)
    if config.overwrite and (count := _answer_count(workdir)):
        raise workdir_lib.WorkdirError(
            f'{workdir} holds a study with {count} answer(s); a study with answers is never '
            'replaced: export them (--config.mode=export) and prepare the new study in '
            'another --workdir'
        )
    workdir_lib.prepare(config, workdir)
    reused = manifest_lib.exists(workdir)
    if reused:
        manifest = manifest_lib.load(workdir)
        manifest_lib.verify(workdir, manifest)
        workdir_lib.save_config(config, workdir)
    else:
        manifest, payloads = manifest_lib.build(config)  # Every input error before a write.
        workdir_lib.save_config(config, workdir)
        manifest_lib.write(workdir, manifest, payloads)
    study = server.Study(workdir)
    verb = 'reusing the prepared' if reused else 'prepared the'
    print(
        f'userstudy: {verb} study {manifest["study_hash"][:12]} in {workdir}: '
        f'{len(manifest["identities"])} identities, {len(manifest["trials"])} pair trials, '
        f'arms {", ".join(a["name"] for a in manifest["arms"])}; '
        f'{study.store.count()} answer(s) so far',
        flush=True,
    )
    invited = [r.strip() for r in config.invite.split(',') if r.strip()]
    # Port 0 (any free port): the address is known only once serving; links are relative.
    base = f'http://{config.host}:{config.port}' if config.port else ''
    for rater_id in invited:
        if not server.RATER_ID.fullmatch(rater_id):
            raise ValueError(f'invite: {rater_id!r} is not a rater id (1-64 of A-Za-z0-9_.@-)')
        rater = study.join(rater_id)
        print(f'  {rater_id}: {base}/t/{rater["token"]}', flush=True)
    return manifest


def export(workdir: str) -> dict[str, str]:
    """Writes the answers and raters as CSV/JSON under `workdir/export`; returns the paths."""
    manifest = manifest_lib.load(workdir)
    db = store.Store(workdir, manifest['study_hash'])
    answers = db.answers()
    raters = db.raters()
    out = os.path.join(workdir, EXPORT_DIR)
    os.makedirs(out, exist_ok=True)
    rows = [{k: a[k] for k in store.ANSWER_FIELDS} for a in answers]
    per_rater = [
        {
            'rater': r['rater'],
            'seed': r['seed'],
            'created': r['created'],
            'trials': len(r['plan']),
            'answered': sum(a['rater'] == r['rater'] for a in answers),
        }
        for r in raters
    ]
    paths = {
        'answers_csv': os.path.join(out, 'answers.csv'),
        'answers_json': os.path.join(out, 'answers.json'),
        'raters_csv': os.path.join(out, 'raters.csv'),
    }
    if rows:
        files.write_csv(paths['answers_csv'], rows)
    else:
        atomic.write_text(paths['answers_csv'], ','.join(store.ANSWER_FIELDS) + '\n')
    atomic.write_json(
        paths['answers_json'],
        {'study_hash': manifest['study_hash'], 'arms': manifest['arms'], 'answers': rows},
        indent=1,
    )
    if per_rater:
        files.write_csv(paths['raters_csv'], per_rater)
    else:
        atomic.write_text(paths['raters_csv'], 'rater,seed,created,trials,answered\n')
    print(f'userstudy: exported {len(rows)} answer(s) of {len(raters)} rater(s) to {out}')
    return paths


def summary(workdir: str) -> dict[str, Any]:
    """Writes `results/summary.{json,md}` and `results/chart.png`; returns the summary."""
    study = server.Study(workdir)
    result = study.summary()
    out = os.path.join(workdir, server.RESULTS_DIR)
    os.makedirs(out, exist_ok=True)
    atomic.write_json(
        os.path.join(out, 'summary.json'),
        {'study_hash': study.manifest['study_hash'], **result},
        indent=1,
    )
    text = stats.markdown(result)
    atomic.write_text(os.path.join(out, 'summary.md'), text)
    stats.bar_chart(result, os.path.join(out, 'chart.png'))
    print(text)
    print(f'userstudy: wrote summary.json, summary.md and chart.png to {out}')
    return result


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Runs `config.mode` on the study in `workdir` (see the module docstring)."""
    _check_mode(config)
    if config.mode == 'prepare':
        return prepare(config, workdir)
    if config.mode == 'serve':
        prepare(config, workdir)
        return server.serve(workdir, config.host, config.port)
    if config.mode == 'export':
        return export(workdir)
    return summary(workdir)
