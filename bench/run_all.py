r"""The benchmark table: every bench/ script, one row each, printed and written to RESULTS.md.

  PYTHONPATH=. python bench/run_all.py [--quick] [--out=FILE] [--only=NAME,...]

Writes bench/RESULTS.md, or with --quick bench/RESULTS-quick.md (so a quick run keeps the
full table), unless --out names another file.

Runs each benchmark as a subprocess (this Python, the repository root on PYTHONPATH), one
after another, and reads the `BENCH_RESULT {json}` line each prints last. Every script times
this library (JAX) and a PyTorch reference in the same process, alternating the two sides
after a warm-up, and reports medians. The rows:

- gmi_attack, kedmi_attack, plgmi_attack, lomma_attack: one attack step (`bench_attack.py
  --attack=`), FaceNet64 or VGG16 target (full: 60 identities x 1 or 5 seeds; LOMMA with
  a GMI and a KEDMI base); `--quick`: GMI, KEDMI and PLG-MI with the script's --quick;
- train_step: one classifier train step (`bench_train_step.py`), VGG16, IR-152 and
  FaceNet64 at 64 px, without and with the TL-DMI freeze (full: batch 64, 5 steps;
  `--quick`: VGG16, the script's --quick), and per arch the line frozen / unfrozen JAX step
  time (< 1: freezing makes the step cheaper);
- gan_step: the critic/discriminator (D) and generator (G) steps of the GMI, KEDMI and
  PLG-MI GANs (`bench_gan.py`; full: batch 64; `--quick`: GMI only, batch 8);
- ppa_attack: one PPA optimisation step (`bench_ppa.py`: StyleGAN2 synthesis -> crops ->
  ResNet-152 -> Poincare loss -> Adam on w) at 256 px (full: full widths, the script's batch;
  `--quick`: the script's --quick, every width divided by 4), and on a GPU also at 1024 px;
- attack_scaling (full only): the GMI step against identities (60-480), devices (1-8;
  simulated on a CPU) and, on a CPU, processes of one core each (1-2; `bench_scaling.py`),
  JAX only;
- fisher: `bench_fisher.py` when the file exists (skipped with a note otherwise).

A script that fails becomes a row with its error (the last line of its stderr) and the
runner goes on. `--only` keeps the rows of those benchmark names (gmi_attack, train_step,
gan_step, ...) or row labels. The GPU-only rows run when JAX or PyTorch sees a GPU, or
with `--gpu`. The header of RESULTS.md describes the machine (CPU, cores, memory,
jax/jaxlib/torch versions, JAX backend and devices, the GPU), the mode (quick or full), the
date (UTC) and the command. The PyTorch side of the scripts runs on CUDA when PyTorch sees
it; JAX on its default backend.
"""

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'bench')
MARKER = 'BENCH_RESULT '
COLUMNS = (
    'row',
    'configuration',
    'unit',
    'JAX s',
    'PyTorch s',
    'ratio PyTorch/JAX',
    'GFLOP/s JAX / PyTorch',
    'peak MB',
    'notes',
)


@dataclasses.dataclass(frozen=True)
class Bench:
    """One row of the table: a bench/ script and its arguments."""

    label: str  # The row's name in the table.
    name: str  # The benchmark's name (its BENCH_RESULT `name`).
    script: str  # File name under bench/.
    args: tuple[str, ...] = ()


def plan(quick: bool, gpu: bool = False) -> list[Bench]:
    """The rows of the table, in the order they run (`gpu`: with the GPU-only rows)."""
    attack, train, ppa = 'bench_attack.py', 'bench_train_step.py', 'bench_ppa.py'
    gan = 'bench_gan.py'
    if quick:  # One row per attack family and GAN step kind: under 5 minutes on 2 cores.
        rows = [
            Bench('gmi_attack facenet64', 'gmi_attack', attack, ('--target=facenet64', '--quick')),
            Bench(
                'kedmi_attack facenet64',
                'kedmi_attack',
                attack,
                ('--attack=kedmi', '--target=facenet64', '--quick'),
            ),
            Bench(
                'plgmi_attack facenet64',
                'plgmi_attack',
                attack,
                ('--attack=plgmi', '--target=facenet64', '--quick'),
            ),
            Bench('train_step vgg16', 'train_step', train, ('--arch=vgg16', '--quick')),
            Bench(
                'train_step vgg16 frozen',
                'train_step',
                train,
                ('--arch=vgg16', '--quick', '--freeze'),
            ),
            Bench('gan_step gmi D', 'gan_step', gan, ('--prior=gmi', '--step=d', '--quick')),
            Bench('gan_step gmi G', 'gan_step', gan, ('--prior=gmi', '--step=g', '--quick')),
            Bench('ppa_attack 256px', 'ppa_attack', ppa, ('--quick',)),
        ]
    else:
        ids = '--identities=60'
        full_train = ('--batch=64', '--steps=5')
        rows = [
            Bench(
                'gmi_attack facenet64 60x1',
                'gmi_attack',
                attack,
                ('--target=facenet64', ids, '--seeds=1'),
            ),
            Bench(
                'gmi_attack facenet64 60x5',
                'gmi_attack',
                attack,
                ('--target=facenet64', ids, '--seeds=5'),
            ),
            Bench(
                'gmi_attack vgg16 60x5', 'gmi_attack', attack, ('--target=vgg16', ids, '--seeds=5')
            ),
            Bench(
                'kedmi_attack facenet64 60x1',
                'kedmi_attack',
                attack,
                ('--attack=kedmi', '--target=facenet64', ids, '--seeds=1'),
            ),
            Bench(
                'kedmi_attack vgg16 60x1',
                'kedmi_attack',
                attack,
                ('--attack=kedmi', '--target=vgg16', ids, '--seeds=1'),
            ),
            Bench(
                'plgmi_attack facenet64 60x1',
                'plgmi_attack',
                attack,
                ('--attack=plgmi', '--target=facenet64', ids, '--seeds=1'),
            ),
            Bench(
                'lomma_attack gmi facenet64 60x1',
                'lomma_attack',
                attack,
                ('--attack=lomma', '--lomma-base=gmi', '--target=facenet64', ids, '--seeds=1'),
            ),
            Bench(
                'lomma_attack kedmi facenet64 60x1',
                'lomma_attack',
                attack,
                ('--attack=lomma', '--lomma-base=kedmi', '--target=facenet64', ids, '--seeds=1'),
            ),
            *[
                Bench(
                    f'train_step {arch}{" frozen" if frozen else ""}',
                    'train_step',
                    train,
                    (f'--arch={arch}', *full_train, *(('--freeze',) if frozen else ())),
                )
                for arch in ('vgg16', 'ir152', 'facenet64')
                for frozen in (False, True)
            ],
            *[
                Bench(f'gan_step {p} {s.upper()}', 'gan_step', gan, (f'--prior={p}', f'--step={s}'))
                for p in ('gmi', 'kedmi', 'plgmi')
                for s in ('d', 'g')
            ],
            Bench('ppa_attack 256px', 'ppa_attack', ppa, ('--resolution=256',)),
            Bench(
                'attack_scaling facenet64',
                'attack_scaling',
                'bench_scaling.py',
                ('--target=facenet64',),
            ),
        ]
        if gpu:
            rows.append(Bench('ppa_attack 1024px', 'ppa_attack', ppa, ('--resolution=1024',)))
    rows.append(Bench('fisher', 'fisher', 'bench_fisher.py', ('--quick',) if quick else ()))
    return rows


def select(rows: list[Bench], only: str) -> list[Bench]:
    """The rows whose benchmark name or label is in the comma-separated `only` ('' = all)."""
    wanted = {w.strip() for w in only.split(',') if w.strip()}
    if not wanted:
        return rows
    known = {r.name for r in rows} | {r.label for r in rows}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f'--only: unknown {unknown}; choose from {sorted(known)}')
    return [r for r in rows if r.name in wanted or r.label in wanted]


# ---------------------------------------------------------------------------------------
# Parsing and rendering (pure functions).


def last_line(text: str) -> str:
    """The last non-empty line of `text` ('' when none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ''


def parse_result(stdout: str, returncode: int, stderr: str = '') -> dict:
    """The BENCH_RESULT object of a script's output, or `{'error': message}`.

    A non-zero exit status is an error (the last line of stderr) even when a BENCH_RESULT line
    was printed; so are a missing line, malformed JSON and JSON that is not an object.
    """
    if returncode != 0:
        return {'error': last_line(stderr) or f'exit status {returncode}'}
    lines = [line.strip() for line in stdout.splitlines() if line.startswith(MARKER)]
    if not lines:
        return {'error': 'no BENCH_RESULT line in its output'}
    try:
        result = json.loads(lines[-1][len(MARKER) :])
    except json.JSONDecodeError as e:
        return {'error': f'malformed BENCH_RESULT: {e}'}
    if not isinstance(result, dict):
        return {'error': f'malformed BENCH_RESULT: a {type(result).__name__}, not an object'}
    return result


def seconds(result: dict, side: str) -> tuple[float | None, str]:
    """(median seconds, unit) of `side` ('jax' or 'torch'): per step or per example."""
    if result.get(f'{side}_s') is not None:
        return float(result[f'{side}_s']), 's/step'
    if result.get(f'{side}_s_per_example') is not None:
        return float(result[f'{side}_s_per_example']), 's/example'
    return None, ''


def ratio(result: dict) -> float | None:
    """PyTorch / JAX (> 1: this library is faster): the script's, else from the medians."""
    if result.get('ratio') is not None:
        return float(result['ratio'])
    jax_s, _ = seconds(result, 'jax')
    torch_s, _ = seconds(result, 'torch')
    return torch_s / jax_s if jax_s and torch_s is not None else None


def fmt_seconds(value: float | None) -> str:
    """Seconds with 3 significant digits ('-' when unknown)."""
    if value is None:
        return '-'
    if value >= 100:
        return f'{value:.0f}'
    if value >= 0.001:
        return f'{value:#.3g}'
    return f'{value:.2e}'


def fmt_ratio(value: float | None) -> str:
    """The ratio PyTorch / JAX with two decimals ('-' when unknown)."""
    return '-' if value is None else f'{value:.2f}'


def fmt_flops(result: dict) -> str:
    """Achieved GFLOP/s of each side: the JAX step's FLOPs over each side's median."""
    flops = result.get('flops_per_step')
    jax_s, unit = seconds(result, 'jax')
    torch_s, _ = seconds(result, 'torch')
    if not flops or unit != 's/step' or not jax_s or not torch_s:
        return '-'
    return f'{flops / jax_s / 1e9:.1f} / {flops / torch_s / 1e9:.1f}'


def fmt_memory(result: dict) -> str:
    """Peak RSS in MiB, plus each side's peak device memory when on a GPU."""
    if result.get('peak_rss_mb') is None:
        return '-'
    text = f'{result["peak_rss_mb"]:.0f}'
    gpu = [
        f'{side} {result[key]:.0f}'
        for side, key in (('JAX', 'jax_device_peak_mb'), ('PyTorch', 'torch_device_peak_mb'))
        if result.get(key) is not None
    ]
    return f'{text} (GPU: {", ".join(gpu)})' if gpu else text


def configuration(result: dict, bench: Bench) -> str:
    """The row's configuration: from its BENCH_RESULT, else the script and its arguments."""
    name = result.get('name')
    parts = []
    if name in ('gmi_attack', 'kedmi_attack', 'plgmi_attack', 'lomma_attack', 'attack_scaling'):
        if name != 'gmi_attack':
            parts.append(str(result.get('attack', name.split('_')[0])))
        parts.append(
            f'{result.get("target")}, {result.get("identities")} identities x '
            f'{result.get("seeds")} seed{"" if result.get("seeds") == 1 else "s"}, '
            f'k={result.get("k")}, {result.get("reps")} reps'
        )
        if result.get('torch_frozen'):
            parts.append('PyTorch without weight gradients')
    elif name == 'train_step':
        freeze = (
            f', TL-DMI freeze k={result.get("freeze_layers", 26)}' if result.get('freeze') else ''
        )
        parts.append(
            f'{result.get("arch")} {result.get("image_size")} px, batch {result.get("batch")}'
            f'{freeze}, {result.get("steps")} steps'
        )
    elif name == 'ppa_attack':
        parts.append(
            f'StyleGAN2 {result.get("resolution")} px + {result.get("target")} '
            f'({result.get("classes")} classes) at 224 px, batch {result.get("batch")}, '
            f'{result.get("steps")} steps'
        )
        if result.get('width_divisor', 1) != 1:
            parts.append(f'every channel width of both / {result["width_divisor"]}')
        if result.get('torch_frozen'):
            parts.append('PyTorch without weight gradients')
    elif name == 'gan_step':
        step = {'d': 'critic/discriminator', 'g': 'generator'}.get(result.get('step'), '?')
        parts.append(
            f'{result.get("prior")} {step} step, {result.get("image_size", 64)} px, batch '
            f'{result.get("batch")}, {result.get("reps")} reps'
        )
        if result.get('target'):
            parts.append(f'target {result["target"]}')
        if result.get('torch_frozen'):
            parts.append("PyTorch without the original's extra work")
    elif name == 'fisher':
        parts.append(f'{result.get("arch")}, {result.get("examples")} examples')
    else:
        return ' '.join([bench.script, *bench.args])
    devices = [
        f'{side} on {result[key]}'
        for side, key in (('JAX', 'jax_backend'), ('PyTorch', 'torch_device'))
        if result.get(key)
    ]
    if result.get('quick'):
        parts.append('quick')
    return '; '.join(parts + devices)


def notes(result: dict) -> str:
    """The error, or compile time, loss agreement, latent agreement and maximum error, where
    reported."""
    if 'error' in result:
        return f'ERROR: {result["error"]}'
    if 'skipped' in result:
        return f'skipped: {result["skipped"]}'
    out = []
    if result.get('compile_s') is not None:
        out.append(f'JAX compile {result["compile_s"]:.1f} s')
    if result.get('loss_rel_diff') is not None:
        out.append(
            f'loss rel. diff {result["loss_rel_diff"]:.1e} at step {result.get("loss_step")}'
        )
    if result.get('grad_norm_rel_diff') is not None:
        out.append(f'grad norm rel. diff {result["grad_norm_rel_diff"]:.1e}')
    if result.get('latent_max_abs_diff') is not None:
        out.append(f'latent max abs diff {result["latent_max_abs_diff"]:.1e}')
    if result.get('step_sign_agreement') is not None:
        out.append(f'step directions agree {result["step_sign_agreement"]:.1%}')
    if result.get('max_rel_err') is not None:
        out.append(f'max rel. error {result["max_rel_err"]:.1e}')
    if result.get('notes'):
        out.append(str(result['notes']))
    if result.get('wall_s') is not None:
        out.append(f'wall {result["wall_s"]:.0f} s')
    return ', '.join(out)


def cell(text: str) -> str:
    """A markdown table cell: one line, pipes escaped."""
    return ' '.join(str(text).split()).replace('|', '\\|')


def row(bench: Bench, result: dict) -> list[str]:
    """The table's cells for one benchmark."""
    jax_s, unit = seconds(result, 'jax')
    torch_s, _ = seconds(result, 'torch')
    return [
        bench.label,
        configuration(result, bench),
        unit or '-',
        fmt_seconds(jax_s),
        fmt_seconds(torch_s),
        fmt_ratio(ratio(result)),
        fmt_flops(result),
        fmt_memory(result),
        notes(result),
    ]


def render_table(rows: list[tuple[Bench, dict]]) -> str:
    """The markdown table of (benchmark, result) pairs."""
    lines = [
        '| ' + ' | '.join(COLUMNS) + ' |',
        '| ' + ' | '.join('---' for _ in COLUMNS) + ' |',
    ]
    for bench, result in rows:
        lines.append('| ' + ' | '.join(cell(c) for c in row(bench, result)) + ' |')
    return '\n'.join(lines)


def freeze_line(rows: list[tuple[Bench, dict]]) -> str | None:
    """Frozen / unfrozen step time of the train_step rows, one line per (arch, batch) that
    has both, or None when none has."""
    steps = [r for _, r in rows if r.get('name') == 'train_step' and 'error' not in r]
    lines = []
    for frozen in (r for r in steps if r.get('freeze')):
        for plain in steps:
            same = all(plain.get(k) == frozen.get(k) for k in ('arch', 'batch'))
            if plain.get('freeze') or not same:
                continue
            jax_f, torch_f = seconds(frozen, 'jax')[0], seconds(frozen, 'torch')[0]
            jax_p, torch_p = seconds(plain, 'jax')[0], seconds(plain, 'torch')[0]
            if not (jax_f and jax_p and torch_f and torch_p):
                continue
            verdict = 'cheaper' if jax_f < jax_p else 'NOT cheaper'
            lines.append(
                f'train_step {frozen.get("arch")} batch {frozen.get("batch")}: frozen / '
                f'unfrozen JAX step time {jax_f / jax_p:.2f} (PyTorch {torch_f / torch_p:.2f}); '
                f'the frozen step is {verdict} in tldmi_jax'
            )
            break
    return '\n\n'.join(lines) or None


def render_header(info: dict, quick: bool, command: str, date: str) -> str:
    """The RESULTS.md header: date, machine, versions, devices, mode and command."""
    gpu = info.get('gpu') or 'none'
    lines = [
        '# Benchmark results',
        '',
        f'- date (UTC): {date}',
        f'- mode: {"quick (--quick: reduced sizes)" if quick else "full"}',
        f'- command: `{command}`',
        f'- CPU: {info.get("cpu", "unknown")}, {info.get("cores", "?")} cores '
        f'({info.get("usable_cores", "?")} usable)',
        f'- memory: {info.get("memory", "unknown")}',
        f'- GPU: {gpu}',
        f'- versions: python {info.get("python", "?")}, jax {info.get("jax", "?")}, '
        f'jaxlib {info.get("jaxlib", "?")}, torch {info.get("torch", "?")}',
        f'- JAX backend: {info.get("jax_backend", "?")}, devices: {info.get("jax_devices", "?")}',
        f'- PyTorch: CUDA {"available" if info.get("torch_cuda") else "not available"}, '
        f'{info.get("torch_threads", "?")} threads',
    ]
    if info.get('error'):
        lines.append(f'- machine description incomplete: {info["error"]}')
    return '\n'.join(lines)


LEGEND = (
    'Each row times this library (JAX) and a PyTorch reference in the same process, the two '
    'sides alternating after a warm-up; JAX s and PyTorch s are medians. ratio = PyTorch / '
    'JAX: > 1 means tldmi_jax is faster. GFLOP/s: the FLOPs of the JAX step (XLA cost '
    "analysis) over each side's median. peak MB: the peak RSS of the benchmark process "
    "(both sides), and on a GPU each side's peak device memory."
)


def render_results(
    info: dict, quick: bool, command: str, date: str, rows: list[tuple[Bench, dict]]
) -> str:
    """The whole RESULTS.md."""
    parts = [render_header(info, quick, command, date), '', render_table(rows), '']
    line = freeze_line(rows)
    if line:
        parts += [line, '']
    parts += [LEGEND, '']
    return '\n'.join(parts)


def cpu_model(cpuinfo: str) -> str:
    """The `model name` of /proc/cpuinfo's text ('unknown' when absent)."""
    for line in cpuinfo.splitlines():
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return 'unknown'


def mem_total(meminfo: str) -> str:
    """`MemTotal` of /proc/meminfo's text, in GiB ('unknown' when absent)."""
    for line in meminfo.splitlines():
        if line.startswith('MemTotal:'):
            return f'{int(line.split()[1]) / 2**20:.1f} GiB'
    return 'unknown'


# ---------------------------------------------------------------------------------------
# Running.

# Runs in a subprocess, so that this process never holds a GPU (JAX preallocates).
_INFO_SNIPPET = r"""
import importlib.metadata, json, platform
out = {'python': platform.python_version()}
try:
    import jax
    out.update(jax=jax.__version__, jaxlib=importlib.metadata.version('jaxlib'),
               jax_backend=jax.default_backend(), jax_devices=str(jax.devices()))
except Exception as e:
    out['error'] = f'jax: {e}'
try:
    import torch
    out.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available(),
               torch_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        out['gpu'] = ', '.join(torch.cuda.get_device_name(i)
                               for i in range(torch.cuda.device_count()))
except Exception as e:
    out['error'] = f'torch: {e}'
print(json.dumps(out))
"""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ''


def machine_info() -> dict:
    """The machine and the library versions (jax and torch read in a subprocess)."""
    info = {
        'cpu': cpu_model(_read('/proc/cpuinfo')),
        'cores': os.cpu_count(),
        'usable_cores': len(os.sched_getaffinity(0)),
        'memory': mem_total(_read('/proc/meminfo')),
    }
    proc = subprocess.run(
        [sys.executable, '-c', _INFO_SNIPPET], capture_output=True, text=True, env=_env()
    )
    try:
        info.update(json.loads(last_line(proc.stdout)))
    except json.JSONDecodeError:
        info['error'] = last_line(proc.stderr) or f'exit status {proc.returncode}'
    return info


def has_gpu(info: dict) -> bool:
    """Whether `machine_info()` saw a GPU (PyTorch's CUDA or JAX's GPU backend)."""
    return bool(info.get('torch_cuda')) or info.get('jax_backend') == 'gpu'


def _env() -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    return env


def run_bench(bench: Bench, timeout: float) -> dict:
    """Runs one script, echoing its stdout; its BENCH_RESULT (plus `wall_s`) or an error."""
    path = os.path.join(BENCH, bench.script)
    if not os.path.exists(path):
        return {'skipped': f'bench/{bench.script} does not exist'}
    cmd = [sys.executable, path, *bench.args]
    print(f'\n== {bench.label}: {shlex.join(["python", f"bench/{bench.script}", *bench.args])}')
    sys.stdout.flush()
    tic = time.perf_counter()
    with tempfile.TemporaryFile(mode='w+') as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True
        )
        killed = threading.Event()

        def kill():
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill) if timeout > 0 else None
        if timer:
            timer.start()
        out = []
        for line in proc.stdout:
            out.append(line)
            print(f'  | {line}', end='', flush=True)
        returncode = proc.wait()
        if timer:
            timer.cancel()
        err.seek(0)
        stderr = err.read()
    result = parse_result(''.join(out), returncode, stderr)
    if killed.is_set():
        result = {'error': f'killed after the timeout of {timeout:.0f} s'}
    result['wall_s'] = time.perf_counter() - tic
    if 'error' in result:
        print(f'  ERROR: {result["error"]}')
    return result


def default_out(quick: bool) -> str:
    """Where the table goes without --out: the full table and the quick one apart."""
    return os.path.join('bench', 'RESULTS-quick.md' if quick else 'RESULTS.md')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='reduced sizes (each script --quick)')
    p.add_argument(
        '--out', default='', help='markdown file (bench/RESULTS.md; --quick: RESULTS-quick.md)'
    )
    p.add_argument('--only', default='', help='comma-separated benchmark names or row labels')
    p.add_argument('--timeout', type=float, default=0, help='seconds per script (0: none)')
    p.add_argument(
        '--gpu', action='store_true', help='the GPU-only rows too (default: when a GPU is seen)'
    )
    args = p.parse_args(argv)
    args.out = args.out or default_out(args.quick)
    info = machine_info()
    gpu = args.gpu or has_gpu(info)
    try:
        benches = select(plan(args.quick, gpu), args.only)
    except ValueError as e:
        p.error(str(e))
    command = shlex.join(['python', 'bench/run_all.py', *(sys.argv[1:] if argv is None else argv)])
    date = datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')
    print(render_header(info, args.quick, command, date))
    rows = [(bench, run_bench(bench, args.timeout)) for bench in benches]
    print()
    print(render_table(rows))
    line = freeze_line(rows)
    if line:
        print(line)
    text = render_results(info, args.quick, command, date, rows)
    with open(args.out, 'w') as f:
        f.write(text)
    print(f'\nwrote {args.out}')
    return 1 if any('error' in r for _, r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
