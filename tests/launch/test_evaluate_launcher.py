"""End to end: launch/evaluate.py with runlocal, then rerun on its artefacts without it."""

import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'evaluate_celeba.py') + ':runlocal'
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


def _run(workdir, *overrides):
    env = dict(os.environ)  # Compile settings: tests/conftest.py.
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'launch', 'evaluate.py'),
        f'--config={CONFIG}',
        f'--workdir={workdir}',
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, 'metrics.json')) as f:
        return json.load(f), proc


def test_runlocal_then_rerun_without_inception(tmp_path):
    workdir = str(tmp_path / 'eval')
    metrics, proc = _run(workdir)
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

    # The same workdir, the artefacts runlocal made, no runlocal: no Inception weights, so
    # FID/KID/PRDC are skipped with a warning; private features come from the cache; the
    # target comes from attack.json.
    again, proc = _run(
        workdir,
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
