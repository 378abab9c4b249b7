"""End to end: launch/distill.py with runlocal (tiny target trained first, two students)."""

import json
import os
import subprocess
import sys

import numpy as np

from tldmi_jax.train import classifier

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'distill_celeba.py') + ':runlocal'
STUDENTS = ('student_0_efficientnet_b0_tiny', 'student_1_small_tiny')


def _run(workdir):
    env = dict(os.environ)  # Compile settings: tests/conftest.py.
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'launch', 'distill.py'),
        f'--config={CONFIG}',
        f'--workdir={workdir}',
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_runlocal_distillation_end_to_end(tmp_path):
    workdir = str(tmp_path / 'aug')
    out = _run(workdir)
    assert 'public holdout agreement@1' in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary == json.load(open(os.path.join(workdir, 'distill.json')))
    assert summary['target']['checkpoint'] == os.path.join(workdir, 'target')
    assert os.path.exists(os.path.join(workdir, 'target', 'results.json'))
    assert [s['name'] for s in summary['students']] == list(STUDENTS)
    for s in summary['students']:
        assert s['steps'] == 10
        assert 0.0 <= s['holdout/agreement@1'] <= 1.0
        assert 0.0 <= s['test/acc@1'] <= 1.0
        model, _ = classifier.load_classifier(s['dir'])
        assert model.num_classes == 4
        records = [json.loads(line) for line in open(os.path.join(s['dir'], 'metrics.jsonl'))]
        losses = [r['train/kd_loss'] for r in records if 'train/kd_loss' in r]
        assert len(losses) == 2 and all(np.isfinite(losses))
        assert os.path.isdir(os.path.join(s['dir'], 'tensorboard'))
    records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
    assert [r['step'] for r in records] == [0, 1]
    assert f'{STUDENTS[1]}/test/acc@1' in records[1]
