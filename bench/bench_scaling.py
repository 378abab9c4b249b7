r"""Scaling of one GMI attack step (JAX only) with the identities and the devices sharded over.

Seconds per step against the identities of a batch, and against the devices the identities
are sharded over.

  PYTHONPATH=. python bench/bench_scaling.py [--target=facenet64]
      [--identities=60,120,240,480] [--devices=1,2,4,8] [--device-identities=120]
      [--processes=1,2] [--reps=3] [--k=1] [--quick]

The step is bench_attack.py's JAX side, imported from it: `gmi.make_problem` with
`config_lib.attack_config('gmi')`'s hyperparameters, run by `latent_search.LatentSearch`
(`JaxSide`: k steps by `LatentSearch.advance`, one step = their time / k),
1 seed per identity. With `--target=facenet64` or `vgg16` the models are bench_attack.py's
(full-size GMI prior and target, the same random weights as its rows, converted from the
PyTorch references by the library's converters, so torch is needed); any other
`tldmi_jax.models` arch (e.g. `small`, the demo CNN, or `facenet64_tiny`) gets random Flax
variables (`bench_attack.random_flax_variables`, no init to compile) and attacks with
bench_attack.py's GMI prior, whose images the attack resizes to the arch's input size
(`common.resize_to`).

(a) Identities: one JAX device, each batch size compiled and timed; prints seconds per step,
    seconds per identity and the linearity (time / identities over that of the first point:
    1.0 = linear, < 1 = larger batches are cheaper per identity).
(b) Devices: for each count N, a subprocess with
    `XLA_FLAGS=--xla_force_host_platform_device_count=N` (the flag must be set before jax
    is imported) times `--device-identities` identities,
    sharded over a 1-D mesh of the N devices as `LatentSearch.run_batch` does
    (`sharding.data_mesh` + `NamedSharding(PartitionSpec('data'))`, as runner.py's
    `config.devices`); prints the speed-up over 1 device and the efficiency (speed-up / N).
    CAVEAT: on a CPU the N devices are simulated and share the same cores (this machine's
    usable cores are printed), so (b) measures the cost of sharding (partitioning, the
    per-device launches, the cross-device collectives) and how XLA:CPU spreads work over
    its cores, not what N real accelerators would give. On a GPU host the flag does not
    apply (it makes CPU devices): N of the GPUs are used, and a count above the GPUs
    present is skipped.

(c) Processes, one core each (CPU only): for each count N in `--processes` (at most the
    usable cores), N worker processes of one multi-process run (`distributed.initialize`,
    gloo collectives, as `--config.distributed=True`), each with one CPU device, pinned to a
    core of its own (`os.sched_setaffinity`) and XLA:CPU single-threaded
    (`--xla_cpu_multi_thread_eigen=false`), time the same `--device-identities` sharded
    over the N devices of all processes; N = 1 is one such process alone. The speed-up over
    N = 1 and the efficiency (speed-up / N) are those of N real cores working in separate
    processes and exchanging data between them, unlike (b); process 0's times are printed.

Each measurement point runs in a worker subprocess of this script (`--worker`; the points of
(a) share one, and (b)'s 1-device point is (a)'s point of the same size when there is one);
the compile is the first call (JAX's persistent compilation cache is used
when JAX_COMPILATION_CACHE_DIR is set), then `--reps` timed calls, median. `--quick`: the
demo CNN (`small`) as the target, identities 4, 8, 16, 32, devices 1, 2, 4, 8 over 32
identities, 3 reps. The last stdout line is `BENCH_RESULT {json}` (bench/run_all.py):
`jax_s` is the first point of (a), `identities_sweep`, `device_sweep` and `process_sweep`
hold the tables, `notes` a one-line summary; there is no PyTorch side (`torch_s` and `ratio`
are null).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = 'SCALING_POINT '
FULL_IDENTITIES = (60, 120, 240, 480)
QUICK_IDENTITIES = (4, 8, 16, 32)
DEVICES = (1, 2, 4, 8)
PROCESSES = (1, 2)


def ints(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4)."""
    values = tuple(int(v) for v in text.split(',') if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f'expected positive integers, got {text!r}')
    return values


# ---------------------------------------------------------------------------------------
# The worker: imports jax (after XLA_FLAGS is set by the parent) and times its points.


def worker(args) -> None:
    """Times the GMI step for each of `args.identities`; prints one SCALING_POINT line each."""
    import statistics

    if args.worker_core >= 0:  # (c): this process on one core, before XLA starts threads.
        os.sched_setaffinity(0, {args.worker_core})
    if args.worker_processes > 1:  # (c): one run of several processes (before any JAX call).
        from tldmi_jax.utils import distributed

        distributed.initialize()
    import jax
    import torch

    from bench import bench_attack
    from tldmi_jax import classifiers, models
    from tldmi_jax.attacks import common, gmi

    _, cfg = bench_attack.attack_cfg('gmi', 'gmi')
    if args.target in bench_attack.TARGETS:  # bench_attack.py's models and weights.
        g, d, t = bench_attack.torch_models(args.target)
        ctx, _ = bench_attack.jax_context(g, d, t, args.target)
    else:  # bench_attack.py's GMI prior, a target with random Flax variables.
        torch.manual_seed(0)  # As bench_attack.torch_models: the same G and D.
        g, d = bench_attack.torch_prior('gmi')
        model = models.get_model(args.target, bench_attack.CLASSES)
        size = models.default_image_size(args.target)
        variables = bench_attack.random_flax_variables(model, seed=3, size=size)
        ctx = common.AttackContext(
            prior=bench_attack.jax_prior('gmi', g, d),
            target=classifiers.bind(model, jax.device_put(variables)),
            num_classes=bench_attack.CLASSES,
            image_size=size,
        )
    problem = gmi.make_problem(ctx, cfg)
    if args.worker_devices > jax.device_count():  # A GPU host with fewer GPUs.
        print(MARKER + json.dumps({'skipped': f'{jax.device_count()} devices present'}))
        return
    for identities in args.identities:
        side = bench_attack.JaxSide(problem, identities, 1, args.k, devices=args.worker_devices)
        flops = side.flops()
        compile_s, aux = side.run()
        times = [side.run()[0] / args.k for _ in range(args.reps)]
        point = {
            'identities': identities,
            'devices': args.worker_devices or jax.device_count(),
            'processes': jax.process_count(),
            'mesh': side.mesh_size,
            'median_s': statistics.median(times),
            'min_s': min(times),
            'max_s': max(times),
            'compile_s': compile_s,
            'flops_per_step': flops,
            'loss': aux['loss'],
        }
        print(MARKER + json.dumps(point), flush=True)
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(MARKER + json.dumps({'peak_rss_mb': rss, 'backend': jax.default_backend()}), flush=True)


# ---------------------------------------------------------------------------------------
# The parent: runs the workers, prints the tables and the BENCH_RESULT line.


def _worker_cmd(args, identities: tuple[int, ...], devices: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        os.path.abspath(__file__),
        '--worker',
        f'--worker-devices={devices}',
        f'--target={args.target}',
        f'--identities={",".join(map(str, identities))}',
        f'--reps={args.reps}',
        f'--k={args.k}',
        *extra,
    ]


def _worker_env(*flags: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env['XLA_FLAGS'] = ' '.join(f for f in (env.get('XLA_FLAGS', ''), *flags) if f)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    return env


def _points(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    return [json.loads(line[len(MARKER) :]) for line in lines if line.startswith(MARKER)]


def _failed(what: str, stderr: str) -> RuntimeError:
    tail = [line for line in stderr.splitlines() if line.strip()][-5:]
    return RuntimeError(f'worker ({what}) failed:\n' + '\n'.join(tail))


def run_worker(args, identities: tuple[int, ...], devices: int) -> list[dict]:
    """One worker subprocess with `devices` simulated CPU devices; its SCALING_POINT dicts."""
    env = _worker_env(f'--xla_force_host_platform_device_count={devices}')
    tic = time.perf_counter()
    cmd = _worker_cmd(args, identities, devices)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise _failed(f'{devices} devices', proc.stderr)
    print(
        f'  worker: {devices} device(s), identities {",".join(map(str, identities))}: '
        f'{time.perf_counter() - tic:.1f} s',
        flush=True,
    )
    return _points(proc.stdout)


def run_processes(args, identities: int, processes: int, cores: list[int]) -> list[dict]:
    """(c): `processes` workers of one run, one CPU device and one core each (`cores`);
    process 0's SCALING_POINT dicts."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        address = f'127.0.0.1:{s.getsockname()[1]}'
    flags = ('--xla_force_host_platform_device_count=1', '--xla_cpu_multi_thread_eigen=false')
    procs = []
    tic = time.perf_counter()
    for index in range(processes):
        run = {}
        if processes > 1:
            run = dict(
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES=str(processes),
                JAX_PROCESS_ID=str(index),
            )
        cmd = _worker_cmd(
            args,
            (identities,),
            0,  # All devices: one in each process.
            f'--worker-core={cores[index]}',
            f'--worker-processes={processes}',
        )
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=_worker_env(*flags, **run),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [proc.communicate() for proc in procs]
    for index, (proc, (_, err)) in enumerate(zip(procs, outs, strict=True)):
        if proc.returncode != 0:
            raise _failed(f'process {index} of {processes}', err)
    print(
        f'  workers: {processes} process(es) on cores {cores[:processes]}, '
        f'identities {identities}: {time.perf_counter() - tic:.1f} s',
        flush=True,
    )
    return _points(outs[0][0])


def print_speedups(points: list[dict], base: dict | None, count: str, mesh_column: bool) -> None:
    """Adds each point's speed-up over `base` and its efficiency (speed-up / mesh size), and
    prints them as a table whose first column is `point[count]`."""
    mesh_head = f' {"mesh":>5}' if mesh_column else ''
    print(f'{"N":>3}{mesh_head} {"s/step":>9} {"min":>8} {"max":>8} {"speed-up":>9} '
          f'{"speed-up/N":>11} {"compile s":>10}')  # fmt: skip
    for point in points:
        point['speedup'] = base['median_s'] / point['median_s'] if base else None
        point['efficiency'] = point['speedup'] / point['mesh'] if base else None
        speedup = '-' if base is None else f'{point["speedup"]:9.2f}'
        eff = '-' if base is None else f'{point["efficiency"]:11.2f}'
        mesh = f' {point["mesh"]:5d}' if mesh_column else ''
        print(
            f'{point[count]:3d}{mesh} {point["median_s"]:9.3f} {point["min_s"]:8.3f} '
            f'{point["max_s"]:8.3f} {speedup:>9} {eff:>11} {point["compile_s"]:10.1f}'
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--target', default='facenet64', help='facenet64 | vgg16 | a JAX arch')
    p.add_argument('--identities', type=ints, default=None, help='(a) batch sizes')
    p.add_argument('--devices', type=ints, default=DEVICES, help='(b) device counts')
    p.add_argument('--device-identities', type=int, default=None, help='(b), (c) batch size')
    p.add_argument(
        '--processes', type=ints, default=PROCESSES, help='(c) process counts, one core each'
    )
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--k', type=int, default=1, help='steps per jitted chunk')
    p.add_argument('--quick', action='store_true', help='small target, identities 4..32')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--worker-devices', type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument('--worker-core', type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument('--worker-processes', type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.target, args.identities, args.reps = 'small', QUICK_IDENTITIES, 3
        args.device_identities = args.device_identities or QUICK_IDENTITIES[-1]
    args.identities = args.identities or FULL_IDENTITIES
    args.device_identities = args.device_identities or 120
    if min(args.reps, args.k) < 1:
        p.error('--reps and --k must be >= 1')
    if args.worker:
        worker(args)
        return
    start = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    print(
        f'GMI attack step (JAX), target {args.target}, 1 seed, k={args.k}, {args.reps} reps; '
        f'{os.cpu_count()} cores ({cores} usable); load average before the run: '
        f'{" ".join(f"{v:.2f}" for v in os.getloadavg())}',
        flush=True,
    )

    # (a) Identities, on one device.
    sweep = run_worker(args, args.identities, 1)
    info = sweep.pop()
    first = sweep[0]
    print(f'\n(a) identities, 1 device ({info["backend"]}):')
    print(f'{"identities":>10} {"s/step":>9} {"min":>8} {"max":>8} {"ms/identity":>12} '
          f'{"linearity":>10} {"compile s":>10}')  # fmt: skip
    for point in sweep:
        per = point['median_s'] / point['identities']
        point['linearity'] = per / (first['median_s'] / first['identities'])
        print(
            f'{point["identities"]:10d} {point["median_s"]:9.3f} {point["min_s"]:8.3f} '
            f'{point["max_s"]:8.3f} {1000 * per:12.1f} {point["linearity"]:10.2f} '
            f'{point["compile_s"]:10.1f}'
        )
    print("linearity: (s/step / identities) over the first point's; 1.0 = linear in identities")

    # (b) Devices; a 1-device point of (a) with the same identities is reused.
    n_ids = args.device_identities
    devices = []
    peak = info['peak_rss_mb']
    for n in args.devices:
        reuse = [q for q in sweep if q['identities'] == n_ids] if n == 1 else []
        if reuse:
            devices.append(dict(reuse[0]))
            continue
        points = run_worker(args, (n_ids,), n)
        if 'skipped' in points[0]:
            print(f'  {n} devices skipped: {points[0]["skipped"]}')
            continue
        point, extra = points
        peak = max(peak, extra['peak_rss_mb'])
        devices.append(point)
    base = next((q for q in devices if q['mesh'] == 1), None)
    kind = 'simulated CPU devices' if info['backend'] == 'cpu' else f'{info["backend"]} devices'
    print(f'\n(b) {n_ids} identities sharded over N {kind}:')
    print_speedups(devices, base, 'devices', mesh_column=True)
    caveat = (
        f"simulated CPU devices share this machine's {cores} usable cores: (b) shows the cost "
        "of sharding and XLA:CPU's use of the cores, not the scaling of real devices"
    )
    if info['backend'] == 'cpu':
        print(f'CAVEAT: {caveat}')

    # (c) Processes, one core each (CPU only: the flags and the pinning are a CPU's).
    usable = sorted(os.sched_getaffinity(0))
    counts = [n for n in args.processes if n <= len(usable)]
    skipped = [n for n in args.processes if n > len(usable)]
    procs = []
    if info['backend'] == 'cpu' and counts:
        for n in counts:
            point, extra = run_processes(args, n_ids, n, usable)
            peak = max(peak, extra['peak_rss_mb'])
            procs.append(point)
        alone = next((q for q in procs if q['processes'] == 1), None)
        print(f'\n(c) {n_ids} identities sharded over N processes, one CPU device and core each:')
        print_speedups(procs, alone, 'processes', mesh_column=False)
        if skipped:
            print(f'  skipped: {skipped} processes (more than the {len(usable)} usable cores)')
    elif info['backend'] != 'cpu':
        print('\n(c) skipped: processes pinned to cores are a CPU measurement')
    wall = time.perf_counter() - start
    print(f'wall time of the script: {wall:.1f} s')

    last = devices[-1]
    notes = (
        f'linearity {sweep[-1]["linearity"]:.2f} at {sweep[-1]["identities"]} identities; '
        f'speed-up {last["speedup"]:.2f} on {last["mesh"]} devices'
        if base
        else f'linearity {sweep[-1]["linearity"]:.2f} at {sweep[-1]["identities"]} identities'
    )
    if info['backend'] == 'cpu':
        notes += ' (simulated CPU devices)'
    if len(procs) > 1 and procs[-1]['speedup'] is not None:
        notes += (
            f'; {procs[-1]["processes"]} processes on a core each: speed-up '
            f'{procs[-1]["speedup"]:.2f} (efficiency {procs[-1]["efficiency"]:.2f})'
        )
    result = {
        'name': 'attack_scaling',
        'attack': 'gmi',
        'target': args.target,
        'identities': first['identities'],
        'seeds': 1,
        'k': args.k,
        'reps': args.reps,
        'quick': args.quick,
        'jax_backend': info['backend'],
        'jax_s': first['median_s'],
        'torch_s': None,
        'ratio': None,
        'compile_s': first['compile_s'],
        'flops_per_step': first['flops_per_step'],
        'peak_rss_mb': peak,
        'identities_sweep': sweep,
        'device_identities': n_ids,
        'device_sweep': devices,
        'process_sweep': procs,
        'usable_cores': cores,
        'notes': notes,
        'script_wall_s': wall,
    }
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
