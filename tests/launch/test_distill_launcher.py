"""End to end: launch/distill.py with runlocal (tiny target trained first, two students),
and the same run SIGKILLed at a seeded random point and rerun."""

import json
import os

import numpy as np
import pytest

from tests.launch import crash
from tldmi_jax import classifiers
from tldmi_jax.utils import checkpoint

CONFIG = 'distill_celeba.py:runlocal'
STUDENTS = ('student_0_efficientnet_b0_tiny', 'student_1_small_tiny')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """`(workdir, stdout)` of one uninterrupted run, shared by the tests below."""
    workdir = str(tmp_path_factory.mktemp('distill') / 'aug')
    return workdir, crash.run_here(crash.command('distill', CONFIG, workdir)).stdout


def test_runlocal_distillation_end_to_end(reference):
    workdir, out = reference
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
        model, _ = classifiers.load(s['dir'])
        assert model.num_classes == 4
        records = [json.loads(line) for line in open(os.path.join(s['dir'], 'metrics.jsonl'))]
        losses = [r['train/kd_loss'] for r in records if 'train/kd_loss' in r]
        assert len(losses) == 2 and all(np.isfinite(losses))
        assert os.path.isdir(os.path.join(s['dir'], 'tensorboard'))
    records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
    assert [r['step'] for r in records] == [0, 1]
    assert f'{STUDENTS[1]}/test/acc@1' in records[1]


def _milestones(workdir):
    """Checkpoints so far (0..10): target every 10 of 60 steps, students every 5 of 10."""
    done = crash.latest_step(os.path.join(workdir, 'target', 'checkpoints')) // 10
    for name in STUDENTS:
        done += crash.latest_step(os.path.join(workdir, name, 'checkpoints')) // 5
    return done


def test_killed_distillation_resumes_to_the_same_students(reference, tmp_path):
    clean, killed = reference[0], str(tmp_path / 'aug')
    cmd = crash.command('distill', CONFIG, killed)
    crash.kill_at_random_point(cmd, killed, _milestones, test='distill', low=1, high=9)
    assert not os.path.exists(os.path.join(killed, 'distill.json'))
    crash.run_here(cmd)

    for name in ('target', *STUDENTS):
        crash.assert_trees_equal(
            checkpoint.load_model(os.path.join(clean, name)),
            checkpoint.load_model(os.path.join(killed, name)),
            f'{name}/',
        )
        records = crash.records(os.path.join(killed, name))
        assert records == crash.records(os.path.join(clean, name)), name
    summary = crash.load_json(os.path.join(killed, 'distill.json'), (killed, clean))
    expected = crash.load_json(os.path.join(clean, 'distill.json'))
    for s in (summary, expected):
        s.pop('protocol_hash')  # Hashes the target's path, which differs between workdirs.
    assert summary == expected
    assert crash.records(killed) == crash.records(clean)


def test_distill_workdir_holds_only_names_overwrite_may_delete(reference):
    from tldmi_jax.utils import workdir as workdir_lib

    workdir, _ = reference
    for d in (workdir, os.path.join(workdir, 'target'), os.path.join(workdir, STUDENTS[0])):
        assert workdir_lib.foreign_entries(d) == [], d
