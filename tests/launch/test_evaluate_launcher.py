"""End to end: launch/evaluate.py with runlocal, then rerun on its artefacts without it; the
same run SIGKILLed at a seeded random point (upstream training, attack or feature caching)."""

import csv
import glob
import json
import os
import shutil

import pytest

from tests.launch import crash

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
    proc = crash.run(crash.command('evaluate', CONFIG, workdir, *overrides))
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
    report = open(os.path.join(workdir, 'report.md')).read()
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
    crash.run(cmd)

    for name in OUTPUTS:
        crash.assert_files_equal(os.path.join(clean, name), os.path.join(killed, name))
    for path in glob.glob(os.path.join(clean, 'feature_cache', '*.npz')):
        crash.assert_npz_equal(path, os.path.join(killed, 'feature_cache', os.path.basename(path)))
    crash.assert_npz_equal(
        *(os.path.join(w, 'runlocal', 'attack', 'reconstructions.npz') for w in (clean, killed))
    )
    assert crash.records(killed) == crash.records(clean)  # One record, not one per attempt.
