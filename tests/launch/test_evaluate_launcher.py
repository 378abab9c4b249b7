"""End to end: launch/evaluate.py with runlocal, then rerun on its artefacts without it; the
same run SIGKILLed at a seeded random point (upstream training, attack or feature caching);
PPA's protocol (configs/evaluate_ppa.py:runlocal) in-process on the same stand-ins."""

import csv
import glob
import json
import logging
import math
import os
import shutil

import pytest

from tests.launch import crash, in_process

CONFIG = 'evaluate_celeba.py:runlocal'
KEYS = [
    'attack/acc@1',
    'attack/acc@1_std',
    'attack/acc@5',
    'attack/acc@5_std',
    'attack/knn_dist',
    'attack/fid',
    'attack/kid',
    'attack/precision',
    'attack/recall',
    'attack/density',
    'attack/coverage',
    'target/natural_acc',
    'protocol_hash',
]


# Files the evaluation writes from its inputs alone (report.md also names the workdir).
OUTPUTS = ('metrics.json', 'per_identity.csv', 'groups.csv', 'pairs.png')


def _run(workdir, *overrides):
    proc = crash.run_here(crash.command('evaluate', CONFIG, workdir, *overrides))
    with open(os.path.join(workdir, 'metrics.json')) as f:
        return json.load(f), proc


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """`(workdir, metrics, proc, copy)`: one uninterrupted runlocal run and a copy of it."""
    base = tmp_path_factory.mktemp('evaluate')
    workdir = str(base / 'eval')
    metrics, proc = _run(workdir)
    shutil.copytree(workdir, str(base / 'pristine'))  # Kept pristine for the kill test.
    return workdir, metrics, proc, str(base / 'pristine')


def test_runlocal_then_rerun_without_inception(reference):
    workdir, metrics, proc, _ = reference
    assert all(k in metrics for k in KEYS)
    # Every metric computed (tiny random Inception); PRDC (k=3) needs 4 successes.
    prdc = ('attack/precision', 'attack/recall', 'attack/density', 'attack/coverage')
    for k in KEYS[:-1]:
        if k in prdc and metrics['attack/num_successful'] < 4:
            assert metrics[k] is None, k
        else:
            assert metrics[k] is not None, k
    assert 0.0 <= metrics['attack/acc@1'] <= metrics['attack/acc@5'] <= 1.0
    assert metrics['attack/knn_dist'] >= 0.0 and metrics['attack/fid'] >= -1e-6
    assert 0.0 <= metrics['target/natural_acc'] <= 1.0
    assert 'attack/knn_dist' in proc.stdout
    with open(os.path.join(workdir, 'report.md')) as f:
        report = f.read()
    assert '| Attack accuracy top-1 | `attack/acc@1` |' in report
    assert '](pairs.png)' in report
    assert os.path.getsize(os.path.join(workdir, 'pairs.png')) > 1000
    with open(os.path.join(workdir, 'per_identity.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [int(r['identity']) for r in rows] == [0, 1, 2, 3]
    assert {'acc@1', 'acc@5', 'knn_dist', 'confidence'} <= set(rows[0])

    # The artefacts runlocal made, no runlocal: no Inception weights, so FID/KID/PRDC are
    # skipped with a warning; the target comes from attack.json. Another config needs another
    # workdir (the workdir guard refuses to mix runs); private features are keyed by content,
    # so a copied cache is reused.
    rerun = f'{workdir}_explicit'
    shutil.copytree(os.path.join(workdir, 'feature_cache'), os.path.join(rerun, 'feature_cache'))
    again, proc = _run(
        rerun,
        '--config.runlocal=False',
        f'--config.attack_dir={workdir}/runlocal/attack',
        f'--config.eval_model.checkpoint={workdir}/runlocal/eval_model',
    )
    assert 'config.fid.inception_checkpoint' in proc.stderr
    assert 'Feature cache hit' in proc.stderr
    assert again['attack/fid'] is None and again['attack/kid'] is None
    assert again['attack/precision'] is None
    for k in ('attack/acc@1', 'attack/knn_dist', 'target/natural_acc', 'protocol_hash'):
        assert again[k] == metrics[k], k


# Milestones in the order a runlocal evaluation reaches them (about 12 s after the imports).
_MILESTONES = (
    'runlocal/target/checkpoints',
    'runlocal/target/results.json',
    'runlocal/eval_model/results.json',
    'runlocal/attack/prior',
    'runlocal/attack/batches/batch_000.npz',
    'runlocal/attack/reconstructions.npz',
)


def _progress(workdir):
    """Milestones reached (0..8): the last two are the private and Inception feature caches."""
    cached = glob.glob(os.path.join(workdir, 'feature_cache', '*.npz'))
    return crash.count_files(workdir, _MILESTONES) + len(cached)


def test_killed_evaluation_resumes_to_the_same_metrics(reference, tmp_path):
    clean, killed = reference[3], str(tmp_path / 'eval')
    cmd = crash.command('evaluate', CONFIG, killed)
    crash.kill_at_random_point(cmd, killed, _progress, test='evaluate', low=1, high=7)
    crash.run_here(cmd)

    for name in OUTPUTS:
        crash.assert_files_equal(os.path.join(clean, name), os.path.join(killed, name))
    for path in glob.glob(os.path.join(clean, 'feature_cache', '*.npz')):
        crash.assert_npz_equal(path, os.path.join(killed, 'feature_cache', os.path.basename(path)))
    crash.assert_npz_equal(
        *(os.path.join(w, 'runlocal', 'attack', 'reconstructions.npz') for w in (clean, killed))
    )
    assert crash.records(killed) == crash.records(clean)  # One record, not one per attempt.


def test_ppa_protocol_in_process(reference, tmp_path, capsys, caplog):
    """configs/evaluate_ppa.py:runlocal on the reference's stand-ins (target, evaluation
    model, reconstructions): delta_eval and delta_face (tiny random FaceNet) are finite; then
    without a FaceNet and without runlocal delta_face is skipped with the warning. FID is off
    (the reference runs it; PPA's choice of images: test_evaluate_parts.py)."""
    workdir, metrics = reference[0], reference[1]
    stand_ins = [
        f'--config.target.checkpoint={workdir}/runlocal/target',
        f'--config.attack_dir={workdir}/runlocal/attack',
        f'--config.eval_model.checkpoint={workdir}/runlocal/eval_model',
        '--config.fid.enabled=False',
    ]
    config = f'--config={os.path.join(crash.ROOT, "configs", "evaluate_ppa.py:runlocal")}'

    def launch(out, *extra):
        # The evaluation model's features of the private images are the reference's.
        shutil.copytree(os.path.join(workdir, 'feature_cache'), os.path.join(out, 'feature_cache'))
        status = in_process.call_launcher('evaluate', [config, f'--workdir={out}', *extra])
        assert status == 0, capsys.readouterr().err[-3000:]
        with open(os.path.join(out, 'metrics.json')) as f:
            return json.load(f)

    ppa = launch(str(tmp_path / 'ppa'), *stand_ins)
    for key in ('attack/delta_eval', 'attack/delta_face'):
        assert ppa[key] is not None and math.isfinite(ppa[key]) and ppa[key] >= 0.0, key
    assert 'attack/knn_dist' not in ppa
    # The same distance as the 64 px protocol's, under PPA's name; accuracy is unchanged.
    assert ppa['attack/delta_eval'] == pytest.approx(metrics['attack/knn_dist'], rel=1e-5)
    assert ppa['attack/acc@1'] == metrics['attack/acc@1']
    with open(tmp_path / 'ppa' / 'per_identity.csv') as f:
        assert {'delta_eval', 'delta_face'} <= set(next(csv.DictReader(f)))
    assert '`attack/delta_face` |' in (tmp_path / 'ppa' / 'report.md').read_text()

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = launch(str(tmp_path / 'no_face'), *stand_ins, '--config.runlocal=False')
    assert 'delta_face skipped' in caplog.text and 'config.face_model.checkpoint' in caplog.text
    assert again['attack/delta_face'] is None
    assert again['attack/delta_eval'] == ppa['attack/delta_eval']
    assert again['protocol_hash'] == ppa['protocol_hash'] != metrics['protocol_hash']
