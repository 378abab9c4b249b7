"""Atomic writes: a kill at any point leaves the old or the new content, never a mix."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tldmi_jax.utils import atomic, checkpoint, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Replaces `path` (a directory of two files) with version `new`, dying (os._exit, as after
# SIGKILL: no cleanup runs) at the k-th rename, removal or file write.
_SWAP = r"""
import os, shutil, sys
from tldmi_jax.utils import atomic

path, new, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
count = [0]

def point():
    if count[0] == k:
        os._exit(9)
    count[0] += 1

def dying(real):
    def wrapped(*args, **kwargs):
        point()
        return real(*args, **kwargs)
    return wrapped

os.replace, shutil.rmtree = dying(os.replace), dying(shutil.rmtree)
os.remove, os.rmdir = dying(os.remove), dying(os.rmdir)
with atomic.replacing_dir(path) as tmp:
    os.makedirs(tmp)
    for name in ('a', 'b'):
        point()
        with open(os.path.join(tmp, name), 'w') as f:
            f.write(new)
print('finished')
"""


def _version(path):
    """The version a directory holds; fails on a mix of two versions or a missing file."""
    contents = {open(os.path.join(path, n)).read() for n in ('a', 'b')}
    assert len(contents) == 1, contents
    return contents.pop()


def _swap(path, new, k):
    proc = subprocess.run(
        [sys.executable, '-c', _SWAP, path, new, str(k)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 9), proc.stderr
    return proc.returncode == 0


def test_directory_swap_killed_at_every_point_leaves_old_or_new(tmp_path):
    path = str(tmp_path / 'model')
    assert _swap(path, 'v1', 99)  # The first version, written whole.
    seen = []
    for k in range(20):
        finished = _swap(path, f'v{k + 2}', k)
        atomic.recover_dir(path)  # What every reader of a model directory does first.
        version = _version(path)
        assert version in (f'v{k + 1}', f'v{k + 2}'), (k, version)
        seen.append(version == f'v{k + 2}')
        if finished:
            break
        if version == f'v{k + 2}':  # Killed after the swap: the next run starts from it.
            continue
        # Still the old version: write the expected one for the next round.
        assert _swap(path, f'v{k + 2}', 99)
    assert finished and k >= 6, k  # Every kill point up to a completed swap was tried.
    assert any(seen[:-1]), 'no kill point fell after the commit'
    assert sorted(os.listdir(tmp_path)) == ['model']  # A finished swap leaves no leftovers.


def test_a_failing_block_leaves_the_old_directory(tmp_path):
    path = str(tmp_path / 'd')
    with atomic.replacing_dir(path) as tmp:
        os.makedirs(tmp)
        open(os.path.join(tmp, 'f'), 'w').write('old')
    with pytest.raises(RuntimeError), atomic.replacing_dir(path) as tmp:
        os.makedirs(tmp)
        open(os.path.join(tmp, 'f'), 'w').write('half')
        raise RuntimeError
    assert open(os.path.join(path, 'f')).read() == 'old'
    assert sorted(os.listdir(tmp_path)) == ['d']


def test_model_loaders_finish_an_interrupted_swap(tmp_path):
    params = {'fc': {'kernel': np.full((2, 2), 3.0, np.float32)}}
    workdir = tmp_path / 'run'
    checkpoint.save_model(str(workdir / 'model_best'), params, {})
    # The state between the swap's two renames: the new model waits as `model_best.new`.
    os.replace(workdir / 'model_best', workdir / 'model_best.new')
    tree = checkpoint.load_model(str(workdir))
    np.testing.assert_array_equal(tree['params']['fc']['kernel'], 3.0)
    assert sorted(os.listdir(workdir)) == ['model_best']
    # A half-written `.partial` directory is never read, and the next save removes it.
    os.makedirs(workdir / 'model_final.partial')
    with pytest.raises(ValueError, match='not a readable'):
        checkpoint.load_model(str(workdir / 'model_final.partial'))
    checkpoint.save_model(str(workdir / 'model_final'), params, {})
    assert sorted(os.listdir(workdir)) == ['model_best', 'model_final']


def test_file_writers_replace_whole_files(tmp_path):
    path = str(tmp_path / 'out' / 'results.json')
    atomic.write_json(path, {'a': 1})
    with pytest.raises(RuntimeError), atomic.open_for_write(path) as f:
        f.write('{"a": 2, "trunc')
        raise RuntimeError
    assert json.load(open(path)) == {'a': 1}
    atomic.savez(str(tmp_path / 'x.npz'), v=np.arange(3))
    assert np.load(tmp_path / 'x.npz')['v'].tolist() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ['out', 'x.npz']
    assert os.listdir(tmp_path / 'out') == ['results.json']


def test_metrics_log_survives_a_torn_last_line(tmp_path):
    workdir = str(tmp_path)
    writer = metrics.MetricWriter(workdir, tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, {'loss': float(step)}, log=False)
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
        f.write('{"step": 4, "lo')  # A kill in the middle of an append.
    assert [r['step'] for r in metrics.read_metrics(workdir)] == [1, 2, 3]
    writer = metrics.MetricWriter(workdir, tensorboard=False)  # The rerun's writer.
    writer.write(4, {'loss': 4.0}, log=False)
    assert [r['step'] for r in metrics.read_metrics(workdir)] == [1, 2, 3, 4]
    metrics.truncate(workdir, 2)  # Resuming from the checkpoint of step 2.
    assert [r['step'] for r in metrics.read_metrics(workdir)] == [1, 2]
    metrics.truncate(workdir, -1)  # No checkpoint: the run starts again.
    assert metrics.read_metrics(workdir) == []


def test_a_record_already_written_is_not_written_again(tmp_path):
    """A rerun of a finished run, or a kill right after the last record: one record each."""
    workdir = str(tmp_path)
    writer = metrics.MetricWriter(workdir, tensorboard=False)
    writer.write(5, {'loss': 1.0}, log=False)
    writer.write(5, {'val/acc': 0.5}, log=False)  # Other keys at the same step: a record.
    writer = metrics.MetricWriter(workdir, tensorboard=False)  # The rerun.
    writer.write(5, {'loss': 2.0}, log=False)
    writer.write(5, {'val/acc': 0.5}, log=False)
    writer.write(6, {'loss': 3.0}, log=False)
    writer.write(6, {'loss': 3.0}, log=False)
    records = metrics.read_metrics(workdir)
    assert records == [
        {'step': 5, 'loss': 1.0},
        {'step': 5, 'val/acc': 0.5},
        {'step': 6, 'loss': 3.0},
    ]


def test_a_damaged_line_names_the_file_and_the_line(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \x00\x00}\n{"step": 3}\n')
    with pytest.raises(metrics.MetricsError) as err:
        metrics.read_metrics(str(tmp_path))
    message = str(err.value)
    assert message.startswith(f'{path}, line 2: damaged record (Expecting value: ')
    assert 'delete or repair that line' in message and '\n' not in message
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(metrics.MetricsError, match='line 2: damaged record .not a JSON object'):
        metrics.MetricWriter(str(tmp_path), tensorboard=False)


def test_files_get_the_mode_of_a_plain_open(tmp_path):
    """0o666 less the umask, as `open()` gives, not mkstemp's 0o600."""
    old = os.umask(0o027)
    try:
        atomic.write_json(str(tmp_path / 'a.json'), {})
        atomic.savez(str(tmp_path / 'b.npz'), v=np.arange(2))
        with open(tmp_path / 'plain', 'w'):
            pass
    finally:
        os.umask(old)
    modes = {n: os.stat(tmp_path / n).st_mode & 0o777 for n in ('a.json', 'b.npz', 'plain')}
    assert modes == {'a.json': 0o640, 'b.npz': 0o640, 'plain': 0o640}
    atomic.write_text(str(tmp_path / 'c.txt'), 'x')
    assert os.stat(tmp_path / 'c.txt').st_mode & 0o777 == 0o666 & ~old


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names
    )


@pytest.mark.parametrize('kind', ['user_dir', 'workdir', 'file', 'symlink'])
def test_replacing_dir_refuses_what_this_library_did_not_write(tmp_path, kind):
    path = tmp_path / 'dst'
    if kind == 'file':
        path.write_text('a user file')
    elif kind == 'symlink':
        (tmp_path / 'elsewhere').mkdir()
        (tmp_path / 'elsewhere' / 'keep.txt').write_text('keep')
        path.symlink_to(tmp_path / 'elsewhere')
    else:
        path.mkdir()
        (path / 'notes.txt').write_text('my notes')
        if kind == 'workdir':  # A finished trainer workdir: its model dirs are ours, it is not.
            checkpoint.save_model(str(path / 'model_final'), {'w': np.ones(2)}, {})
            (path / 'config.json').write_text('{}')
    before = _files(tmp_path)
    with pytest.raises(atomic.ForeignPathError, match='refusing to replace'):
        with atomic.replacing_dir(str(path)) as tmp:
            os.makedirs(tmp)
    assert _files(tmp_path) == before


def test_replacing_dir_replaces_its_own_empty_and_legacy_dirs(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with atomic.replacing_dir(str(empty)) as tmp:
        os.makedirs(tmp)
        open(os.path.join(tmp, 'f'), 'w').write('new')
    assert sorted(os.listdir(empty)) == [atomic.OWNER_MARKER, 'f']
    # A model directory written before the marker existed (orbax files only) is replaced.
    legacy = tmp_path / 'legacy'
    checkpoint.save_model(str(legacy), {'w': np.ones(2)}, {})
    os.remove(legacy / atomic.OWNER_MARKER)
    assert atomic.owned(str(legacy))
    checkpoint.save_model(str(legacy), {'w': np.zeros(2)}, {})
    assert float(checkpoint.load_model(str(legacy))['params']['w'].sum()) == 0.0
    (legacy / 'notes.txt').write_text('mine')  # Now it holds a user's file: refused.
    assert not atomic.owned(str(legacy))
    with pytest.raises(atomic.ForeignPathError):
        checkpoint.save_model(str(legacy), {'w': np.ones(2)}, {})


def test_a_user_directory_under_a_temporary_name_is_never_deleted(tmp_path):
    path = tmp_path / 'model'
    for suffix in ('.new', '.old', '.partial'):
        other = tmp_path / f'model{suffix}'
        other.mkdir()
        (other / 'keep.txt').write_text('keep')
        with pytest.raises(atomic.ForeignPathError, match='refusing to delete'):
            with atomic.replacing_dir(str(path)) as tmp:
                os.makedirs(tmp)
        atomic.recover_dir(str(path))  # Never promotes a foreign `.new`/`.old` either.
        assert not path.exists() and (other / 'keep.txt').read_text() == 'keep'
        shutil.rmtree(other)
