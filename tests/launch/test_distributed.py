"""Two processes on CPU (JAX's multi-controller runtime over gloo) against one process.

Each process of a two-process run has one CPU device; the reference is one process with two
devices (`--xla_force_host_platform_device_count=2`), so both meshes have two devices and the
numbers must agree bit for bit. The two-process runs are killed (SIGKILL, both processes) at
a seeded moment and restarted, so the same comparison also checks that they resume.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.launch import crash
from tldmi_jax import priors
from tldmi_jax.utils import checkpoint

TRAIN = ('celeba.py:runlocal', '--config.total_steps=20', '--config.checkpoint_every_steps=5')
TRAIN += ('--config.eval_every_steps=10', '--config.log_every_steps=5')
ATTACK_CONFIG = 'attack_celeba.py:runlocal'
GAN_CONFIG = 'gan_celeba.py:prior=kedmi,runlocal'
ORBAX_DIRS = ('checkpoints', 'model_best', 'model_final', 'prior')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _one_process(cmd: list[str]) -> None:
    """`cmd` in one process with two CPU devices."""
    env = crash.cpu_devices_env(2, PYTHONPATH=crash.ROOT)
    proc = subprocess.run(cmd, cwd=crash.ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _start(
    cmd: list[str], processes: int = 2, distributed_flag: bool = True
) -> list[subprocess.Popen]:
    """`cmd --config.distributed=True` as `processes` processes of one run (loopback)."""
    address = f'127.0.0.1:{_free_port()}'
    procs = []
    for index in range(processes):
        env = crash.cpu_devices_env(
            1,
            PYTHONPATH=crash.ROOT,
            JAX_COORDINATOR_ADDRESS=address,
            JAX_NUM_PROCESSES=str(processes),
            JAX_PROCESS_ID=str(index),
        )
        procs.append(
            subprocess.Popen(
                [*cmd, '--config.distributed=True'] if distributed_flag else cmd,
                cwd=crash.ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for every process; asserts they succeeded; returns their stdout."""
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def _kill_when(procs, progress, n: int, test: str) -> None:
    """SIGKILLs every process once `progress()` >= n (plus a seeded fraction of a second)."""
    delay = float(crash.rng(test).uniform(0.0, 0.3))
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if progress() >= n:
            time.sleep(delay)
            break
        time.sleep(0.005)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f'{test}: ended before the kill at {n}'


def _files(workdir: str) -> list[str]:
    """Every file under `workdir` (relative); of orbax's directories, their steps only
    (their data files are named by content hashes and laid out per process)."""
    found = set()
    for top, _, names in os.walk(workdir):
        for name in names:
            parts = os.path.relpath(os.path.join(top, name), workdir).split(os.sep)
            orbax = [i for i, p in enumerate(parts) if p in ORBAX_DIRS]
            if orbax:
                parts = parts[: orbax[0] + 2]
            found.add('/'.join(parts))
    return sorted(f for f in found if not f.startswith('tensorboard'))


def _results(workdir: str, name: str) -> dict:
    payload = crash.load_json(os.path.join(workdir, name))
    for key in crash.TIMING_KEYS:
        payload.pop(key, None)
    return payload


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """The one-process (two-device) training run: `(workdir, base)`."""
    base = tmp_path_factory.mktemp('distributed')
    workdir = str(base / 'train_one')
    _one_process(crash.command('train', TRAIN[0], workdir, *TRAIN[1:]))
    return workdir, base


def test_two_processes_train_resume_and_equal_one_process(reference):
    """Killed at a seeded checkpoint and restarted, two processes end with the parameters,
    metrics and files of one process; process 0 alone wrote them (one copy, no duplicates)."""
    one, base = reference
    workdir = str(base / 'train_two')
    cmd = crash.command('train', TRAIN[0], workdir, *TRAIN[1:])
    n = 5  # The first checkpoint of four; the seeded delay puts the kill inside a step.
    progress = lambda: crash.latest_step(os.path.join(workdir, 'checkpoints'))  # noqa: E731
    _kill_when(_start(cmd), progress, n, 'distributed_train')
    outs = _finish(_start(cmd))
    last = [out.strip().splitlines()[-2:] for out in outs]  # Both report the result.
    assert last[0] == last[1] and 'natural accuracy' in last[0][0]
    for name in ('model_final', 'model_best'):
        crash.assert_trees_equal(
            checkpoint.load_model(os.path.join(one, name)),
            checkpoint.load_model(os.path.join(workdir, name)),
            f'{name}/',
        )
    assert _results(workdir, 'results.json') == _results(one, 'results.json')
    assert crash.records(workdir) == crash.records(one)  # Each record once.
    assert _files(workdir) == _files(one)
    with open(os.path.join(workdir, 'config.json')) as f:
        assert json.load(f)['distributed'] is True


def test_two_processes_attack_resume_and_equal_one_process(reference, tmp_path):
    """The identities of a batch sharded over both processes' devices: killed and restarted,
    the same reconstructions, grids, metrics and attack.json as one process. runlocal writes
    its tiny prior in each workdir (in the two-process run, process 0 writes it)."""
    target, _ = reference
    inputs = (f'--config.target.checkpoint={target}',)
    inputs += ('--config.attack.num_seeds=2', '--config.attack.steps=8')  # Test time.
    one, two = str(tmp_path / 'attack_one'), str(tmp_path / 'attack_two')
    _one_process(crash.command('attack', ATTACK_CONFIG, one, *inputs))
    cmd = crash.command('attack', ATTACK_CONFIG, two, *inputs)

    def progress():  # Steps of the first identity batch (checkpoints), then of the second.
        batches = [os.path.join(two, 'checkpoints', f'batch_00{i}') for i in (0, 1)]
        done = crash.count_files(two, ['batches/batch_000.npz'])
        return crash.latest_step(batches[0]) + 8 * done + crash.latest_step(batches[1])

    n = int(crash.rng('distributed_attack').choice([4, 12]))  # Inside a batch: restored.
    _kill_when(_start(cmd), progress, n, 'distributed_attack')
    _finish(_start(cmd))
    crash.assert_npz_equal(
        os.path.join(one, 'reconstructions.npz'), os.path.join(two, 'reconstructions.npz')
    )
    for grid in ('grids/batch_000.png', 'grids/batch_001.png'):
        crash.assert_files_equal(os.path.join(one, grid), os.path.join(two, grid))
    assert crash.records(two) == crash.records(one)
    summary = [_results(d, 'attack.json') for d in (one, two)]
    for record in summary:
        record.pop('iterations_per_second')
        record['prior'].pop('checkpoint')  # Each workdir's own; their fingerprints compared.
        for losses in record['final_losses']:
            losses.pop('seconds')
    assert summary[1] == summary[0]
    assert _files(two) == _files(one)


def test_two_processes_train_a_kedmi_gan_like_one_process(reference, tmp_path):
    """KEDMI's GAN (three data streams, minibatch discrimination, the target replicated):
    the same prior, samples grid and metrics from two processes as from one."""
    target, _ = reference
    flags = (f'--config.target.checkpoint={target}', '--config.total_steps=6')
    one, two = str(tmp_path / 'gan_one'), str(tmp_path / 'gan_two')
    _one_process(crash.command('train_gan', GAN_CONFIG, one, *flags))
    _finish(_start(crash.command('train_gan', GAN_CONFIG, two, *flags)))
    prior = [priors.load_prior(os.path.join(d, 'prior')) for d in (one, two)]
    crash.assert_trees_equal(prior[0].variables, prior[1].variables, 'prior/')
    crash.assert_files_equal(
        os.path.join(one, 'samples', 'step_6.png'), os.path.join(two, 'samples', 'step_6.png')
    )
    assert crash.records(two) == crash.records(one)
    assert _files(two) == _files(one)


_PARTS = r"""
import os, sys, time
from tldmi_jax.utils import distributed
distributed.initialize()
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tldmi_jax.utils import sharding
marker = sys.argv[1]
with distributed.main_first('prepare'):  # Process 0 "prepares" slowly; 1 must see it done.
    if distributed.is_main():
        time.sleep(0.5)
        open(marker, 'w').close()
    assert os.path.exists(marker)
mesh = sharding.data_mesh(4)
rows = distributed.process_rows(sharding.batch_sharding(mesh), 4)
me = jax.process_index()
assert rows == slice(2 * me, 2 * me + 2), rows
batch = sharding.from_process_rows({'x': np.arange(4)[rows] * 10}, mesh, 4)
total = jax.jit(lambda b: b['x'].sum())(batch)
gathered = distributed.to_host(batch)['x']
assert gathered.tolist() == [0, 10, 20, 30] and int(total) == 60, (gathered, total)
assert distributed.broadcast_from_main(me == 0) is True  # Process 0's answer everywhere.
state = sharding.replicate({'w': np.arange(3.0, dtype=np.float32), 'n': 2}, mesh)
assert state['w'].is_fully_replicated and len(state['w'].sharding.device_set) == 2
assert float(jax.jit(lambda s: s['w'].sum() * s['n'])(state)) == 6.0
one = sharding.replicate({'w': np.arange(3.0, dtype=np.float32)}, sharding.data_mesh(4, 1))
assert len(one['w'].sharding.device_set) == 1 and one['w'].is_fully_addressable == (me == 0)
try:  # Each process its own values: refused before any of them is placed.
    sharding.replicate({'w': np.arange(3.0, dtype=np.float32) + me}, mesh)
    raise SystemExit('values that differ between processes must be refused')
except ValueError as e:
    assert 'the replicated state differs between processes: process(es) [1]' in str(e), e
try:
    sharding.data_mesh(3)
    raise SystemExit('a batch of 3 over 2 processes must be refused')
except ValueError as e:
    assert 'use a multiple of 2' in str(e), e
print('ok', me, distributed.process_count())
"""


def test_process_rows_main_first_and_gather(tmp_path):
    """The parts on their own: each process's rows of a batch, the global array made from
    them, the gather back, process 0's decision broadcast, process 0 first, a batch that
    does not split refused, and replicated state placed (values that differ refused)."""
    marker = str(tmp_path / 'prepared')
    outs = _finish(_start([sys.executable, '-c', _PARTS, marker], distributed_flag=False))
    assert [out.strip().splitlines()[-1] for out in outs] == ['ok 0 2', 'ok 1 2']
