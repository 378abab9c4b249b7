r"""Scaling of one GMI attack step (JAX only) with the identities and the devices sharded over.

Seconds per step against the identities of a batch, and against the devices the identities
are sharded over.

  PYTHONPATH=. python bench/bench_scaling.py [--target=facenet64]
      [--identities=60,120,240,480] [--devices=1,2,4,8] [--device-identities=120]
      [--reps=3] [--k=1] [--quick]

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

Each measurement point runs in a worker subprocess of this script (`--worker`; the points of
(a) share one, and (b)'s 1-device point is (a)'s point of the same size when there is one);
the compile is the first call (JAX's persistent compilation cache is used
when JAX_COMPILATION_CACHE_DIR is set), then `--reps` timed calls, median. `--quick`: the
demo CNN (`small`) as the target, identities 4, 8, 16, 32, devices 1, 2, 4, 8 over 32
identities, 3 reps. The last stdout line is `BENCH_RESULT {json}` (bench/run_all.py):
`jax_s` is the first point of (a), `identities_sweep` and `device_sweep` hold the tables,
`notes` a one-line summary; there is no PyTorch side (`torch_s` and `ratio` are null).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = 'SCALING_POINT '
FULL_IDENTITIES = (60, 120, 240, 480)
QUICK_IDENTITIES = (4, 8, 16, 32)
DEVICES = (1, 2, 4, 8)


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
            'devices': args.worker_devices,
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


def run_worker(args, identities: tuple[int, ...], devices: int) -> list[dict]:
    """One worker subprocess with `devices` simulated CPU devices; its SCALING_POINT dicts."""
    env = dict(os.environ)
    flag = f'--xla_force_host_platform_device_count={devices}'
    env['XLA_FLAGS'] = ' '.join(f for f in (env.get('XLA_FLAGS', ''), flag) if f)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        '--worker',
        f'--worker-devices={devices}',
        f'--target={args.target}',
        f'--identities={",".join(map(str, identities))}',
        f'--reps={args.reps}',
        f'--k={args.k}',
    ]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-5:]
        raise RuntimeError(f'worker ({devices} devices) failed:\n' + '\n'.join(tail))
    points = [
        json.loads(line[len(MARKER) :])
        for line in proc.stdout.splitlines()
        if line.startswith(MARKER)
    ]
    print(
        f'  worker: {devices} device(s), identities {",".join(map(str, identities))}: '
        f'{time.perf_counter() - tic:.1f} s',
        flush=True,
    )
    return points


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--target', default='facenet64', help='facenet64 | vgg16 | a JAX arch')
    p.add_argument('--identities', type=ints, default=None, help='(a) batch sizes')
    p.add_argument('--devices', type=ints, default=DEVICES, help='(b) device counts')
    p.add_argument('--device-identities', type=int, default=None, help='(b) batch size')
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--k', type=int, default=1, help='steps per jitted chunk')
    p.add_argument('--quick', action='store_true', help='small target, identities 4..32')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--worker-devices', type=int, default=1, help=argparse.SUPPRESS)
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
    print(f'{"N":>3} {"mesh":>5} {"s/step":>9} {"min":>8} {"max":>8} {"speed-up":>9} '
          f'{"speed-up/N":>11} {"compile s":>10}')  # fmt: skip
    for point in devices:
        point['speedup'] = base['median_s'] / point['median_s'] if base else None
        point['efficiency'] = point['speedup'] / point['mesh'] if base else None
        speedup = '-' if base is None else f'{point["speedup"]:9.2f}'
        eff = '-' if base is None else f'{point["efficiency"]:11.2f}'
        print(
            f'{point["devices"]:3d} {point["mesh"]:5d} {point["median_s"]:9.3f} '
            f'{point["min_s"]:8.3f} {point["max_s"]:8.3f} {speedup:>9} {eff:>11} '
            f'{point["compile_s"]:10.1f}'
        )
    caveat = (
        f"simulated CPU devices share this machine's {cores} usable cores: (b) shows the cost "
        "of sharding and XLA:CPU's use of the cores, not the scaling of real devices"
    )
    if info['backend'] == 'cpu':
        print(f'CAVEAT: {caveat}')
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
        'usable_cores': cores,
        'notes': notes,
        'script_wall_s': wall,
    }
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
