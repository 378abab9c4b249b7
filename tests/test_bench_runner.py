"""bench/run_all.py's pure functions: BENCH_RESULT parsing, formatting, the table, the header.

No benchmark runs here: the results are written by hand.
"""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_run_all():
    spec = importlib.util.spec_from_file_location(
        'bench_run_all', os.path.join(ROOT, 'bench', 'run_all.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = _load_run_all()

ATTACK = {
    'name': 'gmi_attack',
    'target': 'facenet64',
    'identities': 60,
    'seeds': 5,
    'batch': 60,
    'k': 1,
    'reps': 5,
    'torch_frozen': False,
    'quick': False,
    'torch_device': 'cpu',
    'jax_backend': 'cpu',
    'jax_s': 2.0,
    'torch_s': 3.0,
    'ratio': 1.5,
    'loss_step': 0,
    'loss_rel_diff': 2e-7,
    'latent_max_abs_diff': None,
    'compile_s': 31.4,
    'flops_per_step': 4e9,
    'peak_rss_mb': 2048.4,
}
TRAIN = {
    'name': 'train_step',
    'arch': 'vgg16',
    'image_size': 64,
    'batch': 8,
    'freeze': False,
    'steps': 3,
    'quick': True,
    'jax_s': 0.2,
    'torch_s': 0.1,
    'ratio': 0.5,
    'compile_s': 8.0,
    'flops_per_step': 5e10,
    'peak_rss_mb': 1500.0,
}
PPA = {
    'name': 'ppa_attack',
    'target': 'resnet152',
    'classes': 530,
    'resolution': 256,
    'width_divisor': 4,
    'batch': 2,
    'steps': 2,
    'torch_frozen': False,
    'quick': True,
    'torch_device': 'cpu',
    'jax_backend': 'cpu',
    'jax_s': 9.0,
    'torch_s': 6.0,
    'ratio': 0.667,
    'loss_step': 0,
    'loss_rel_diff': 1e-7,
    'step_sign_agreement': 0.962,
    'compile_s': 38.5,
    'flops_per_step': 3e10,
    'peak_rss_mb': 1983.2,
}
FISHER = {
    'name': 'fisher',
    'arch': 'vgg16',
    'examples': 16,
    'jax_s_per_example': 0.01,
    'torch_s_per_example': 0.04,
    'ratio': 4.0,
    'max_rel_err': 3e-6,
    'peak_rss_mb': 900.0,
    'quick': True,
}


def bench(label='x', name='gmi_attack', script='bench_attack.py', args=('--quick',)):
    return run_all.Bench(label, name, script, args)


def output(result: dict) -> str:
    return 'machine: cpu\nrep 1/3: ...\nBENCH_RESULT ' + json.dumps(result) + '\n'


# --- parsing ---


def test_parse_valid_line():
    assert run_all.parse_result(output(ATTACK), 0) == ATTACK


def test_parse_takes_the_last_result_line():
    text = output({'name': 'old'}) + output(TRAIN)
    assert run_all.parse_result(text, 0) == TRAIN


def test_parse_missing_line():
    result = run_all.parse_result('machine: cpu\nrep 1/3\n', 0)
    assert result == {'error': 'no BENCH_RESULT line in its output'}


def test_parse_malformed_json_is_an_error_row():
    result = run_all.parse_result('BENCH_RESULT {"name": "gmi_attack", "jax_s": }\n', 0)
    assert result['error'].startswith('malformed BENCH_RESULT')
    assert run_all.parse_result('BENCH_RESULT [1, 2]\n', 0)['error'].startswith('malformed')


def test_parse_failure_reports_the_last_stderr_line():
    stderr = 'Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n\n'
    result = run_all.parse_result(output(ATTACK), 1, stderr)
    assert result == {'error': 'RuntimeError: out of memory'}
    assert run_all.parse_result('', -9, '') == {'error': 'exit status -9'}


# --- formatting ---


def test_seconds_per_step_and_per_example():
    assert run_all.seconds(ATTACK, 'jax') == (2.0, 's/step')
    assert run_all.seconds(FISHER, 'torch') == (0.04, 's/example')
    assert run_all.seconds({'error': 'x'}, 'jax') == (None, '')


def test_ratio_is_pytorch_over_jax():
    assert run_all.ratio(ATTACK) == 1.5
    derived = {k: v for k, v in ATTACK.items() if k != 'ratio'}
    assert run_all.ratio(derived) == pytest.approx(1.5)
    assert run_all.ratio({'error': 'x'}) is None
    assert run_all.fmt_ratio(1.5) == '1.50'
    assert run_all.fmt_ratio(None) == '-'


def test_fmt_seconds():
    assert run_all.fmt_seconds(15.4237) == '15.4'
    assert run_all.fmt_seconds(0.14612) == '0.146'
    assert run_all.fmt_seconds(2.1) == '2.10'
    assert run_all.fmt_seconds(123.4) == '123'
    assert run_all.fmt_seconds(0.00012) == '1.20e-04'
    assert run_all.fmt_seconds(None) == '-'


def test_fmt_flops_and_memory():
    assert run_all.fmt_flops(ATTACK) == '2.0 / 1.3'
    assert run_all.fmt_flops(FISHER) == '-'  # no FLOP count, per-example times
    assert run_all.fmt_memory(ATTACK) == '2048'
    gpu = dict(ATTACK, jax_device_peak_mb=5000.2, torch_device_peak_mb=3000.0)
    assert run_all.fmt_memory(gpu) == '2048 (GPU: JAX 5000, PyTorch 3000)'
    assert run_all.fmt_memory({'error': 'x'}) == '-'


def test_notes():
    assert run_all.notes(ATTACK) == 'JAX compile 31.4 s, loss rel. diff 2.0e-07 at step 0'
    assert run_all.notes(dict(FISHER, wall_s=12.3)) == 'max rel. error 3.0e-06, wall 12 s'
    assert run_all.notes({'error': 'boom', 'wall_s': 3}) == 'ERROR: boom'
    assert run_all.notes({'skipped': 'no file'}) == 'skipped: no file'
    ppa = 'JAX compile 38.5 s, loss rel. diff 1.0e-07 at step 0, step directions agree 96.2%'
    assert run_all.notes(PPA) == ppa


def test_configuration():
    b = bench()
    text = run_all.configuration(ATTACK, b)
    assert text == 'facenet64, 60 identities x 5 seeds, k=1, 5 reps; JAX on cpu; PyTorch on cpu'
    frozen = run_all.configuration(dict(TRAIN, freeze=True), b)
    assert frozen.startswith('vgg16 64 px, batch 8, TL-DMI freeze k=26, 3 steps; quick')
    one = run_all.configuration(dict(ATTACK, seeds=1, quick=True, torch_device=None), b)
    assert one == 'facenet64, 60 identities x 1 seed, k=1, 5 reps; quick; JAX on cpu'
    assert run_all.configuration(FISHER, b) == 'vgg16, 16 examples; quick'
    assert run_all.configuration({'error': 'x'}, b) == 'bench_attack.py --quick'
    ppa = run_all.configuration(PPA, b)
    assert ppa == (
        'StyleGAN2 256 px + resnet152 (530 classes) at 224 px, batch 2, 2 steps; '
        'every channel width of both / 4; quick; JAX on cpu; PyTorch on cpu'
    )
    full = run_all.configuration(dict(PPA, width_divisor=1, quick=False, torch_frozen=True), b)
    assert full.startswith('StyleGAN2 256 px + resnet152 (530 classes) at 224 px, batch 2, 2 steps')
    assert full.endswith('; PyTorch without weight gradients; JAX on cpu; PyTorch on cpu')


# --- table and header ---


def test_table_with_an_error_row():
    rows = [
        (bench('gmi_attack facenet64'), ATTACK),
        (bench('train_step vgg16', 'train_step'), {'error': 'a | b', 'wall_s': 1.0}),
    ]
    lines = run_all.render_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith('| row | configuration | unit | JAX s | PyTorch s | ratio')
    assert lines[1].count('---') == len(run_all.COLUMNS)
    cells = [c.strip() for c in lines[2].strip('|').split(' | ')]
    assert cells[0] == 'gmi_attack facenet64'
    assert cells[2:8] == ['s/step', '2.00', '3.00', '1.50', '2.0 / 1.3', '2048']
    assert 'ERROR: a \\| b' in lines[3]  # the pipe escaped
    assert lines[3].count(' - ') >= 5  # no numbers in an error row


def test_freeze_line():
    frozen = dict(TRAIN, freeze=True, jax_s=0.1, torch_s=0.08)
    rows = [(bench(), TRAIN), (bench(), frozen)]
    line = run_all.freeze_line(rows)
    assert 'frozen / unfrozen JAX step time 0.50 (PyTorch 0.80)' in line
    assert line.endswith('cheaper in tldmi_jax') and 'NOT' not in line
    slower = dict(frozen, jax_s=0.3)
    assert 'NOT cheaper' in run_all.freeze_line([(bench(), TRAIN), (bench(), slower)])
    assert run_all.freeze_line([(bench(), TRAIN)]) is None
    assert run_all.freeze_line([(bench(), TRAIN), (bench(), dict(frozen, batch=64))]) is None


def test_header_fields():
    info = {
        'cpu': 'Intel(R) Xeon(R) CPU @ 2.20GHz',
        'cores': 2,
        'usable_cores': 2,
        'memory': '23.4 GiB',
        'python': '3.11.9',
        'jax': '0.10.2',
        'jaxlib': '0.10.2',
        'torch': '2.13.0+cpu',
        'jax_backend': 'cpu',
        'jax_devices': '[CpuDevice(id=0)]',
        'torch_cuda': False,
        'torch_threads': 2,
    }
    date = '2026-12-01 10:00 UTC'
    header = run_all.render_header(info, True, 'python bench/run_all.py --quick', date)
    for text in (
        '- date (UTC): 2026-12-01 10:00 UTC',
        '- mode: quick',
        '- command: `python bench/run_all.py --quick`',
        '- CPU: Intel(R) Xeon(R) CPU @ 2.20GHz, 2 cores (2 usable)',
        '- memory: 23.4 GiB',
        '- GPU: none',
        'jax 0.10.2, jaxlib 0.10.2, torch 2.13.0+cpu',
        '- JAX backend: cpu, devices: [CpuDevice(id=0)]',
        'CUDA not available',
    ):
        assert text in header, text
    full = run_all.render_results(info, False, 'cmd', date, [(bench(), ATTACK)])
    assert '- mode: full' in full and '| gmi_attack' not in full and '| x |' in full
    assert 'ratio = PyTorch / JAX' in full


def test_has_gpu():
    assert not run_all.has_gpu({'torch_cuda': False, 'jax_backend': 'cpu'})
    assert run_all.has_gpu({'torch_cuda': True, 'jax_backend': 'cpu'})
    assert run_all.has_gpu({'torch_cuda': False, 'jax_backend': 'gpu'})
    assert not run_all.has_gpu({'error': 'jax: ...'})


def test_cpu_model_and_memory():
    cpuinfo = 'processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t: fpu\n'
    assert run_all.cpu_model(cpuinfo) == 'AMD EPYC 7B12'
    assert run_all.cpu_model('') == 'unknown'
    assert run_all.mem_total('MemTotal:       24510000 kB\nMemFree: 1 kB\n') == '23.4 GiB'
    assert run_all.mem_total('') == 'unknown'


def test_plan_and_select():
    quick, full = run_all.plan(True), run_all.plan(False)
    names = {'gmi_attack', 'kedmi_attack', 'plgmi_attack', 'train_step', 'gan_step', 'ppa_attack'}
    assert {b.name for b in quick} == names | {'fisher'}
    assert {b.name for b in full} == names | {'lomma_attack', 'attack_scaling', 'fisher'}
    # The full table: every target's train step with and without the freeze, every GAN step.
    assert len([b for b in full if b.name == 'train_step']) == 6
    assert len([b for b in full if b.name == 'gan_step']) == 6
    assert all('--quick' in b.args for b in quick)
    assert not any('--quick' in b.args for b in full)
    assert ('--target=facenet64', '--identities=60', '--seeds=5') in [b.args for b in full]
    for rows in (quick, full, run_all.plan(True, gpu=True), run_all.plan(False, gpu=True)):
        assert all(os.path.exists(os.path.join(ROOT, 'bench', b.script)) for b in rows)
    ppa = [b.args for b in full if b.name == 'ppa_attack']
    assert ppa == [('--resolution=256',)]
    gpu = [b.args for b in run_all.plan(False, gpu=True) if b.name == 'ppa_attack']
    assert gpu == [('--resolution=256',), ('--resolution=1024',)]
    assert run_all.plan(True, gpu=True) == quick  # No extra quick rows on a GPU.
    only = run_all.select(quick, 'train_step')
    assert [b.label for b in only] == ['train_step vgg16', 'train_step vgg16 frozen']
    assert run_all.select(quick, 'fisher, gan_step gmi D')[0].label == 'gan_step gmi D'
    assert run_all.select(quick, '') == quick
    with pytest.raises(ValueError, match='unknown'):
        run_all.select(quick, 'nope')


def test_gan_step_rows_and_the_freeze_depth_of_other_archs():
    gan = {
        'name': 'gan_step',
        'prior': 'gmi',
        'step': 'd',
        'batch': 8,
        'reps': 3,
        'quick': True,
        'jax_backend': 'cpu',
        'torch_device': 'cpu',
        'jax_s': 0.8,
        'torch_s': 1.6,
        'loss_rel_diff': 2e-4,
        'loss_step': 0,
        'grad_norm_rel_diff': 1e-4,
    }
    text = run_all.configuration(gan, bench())
    assert text == (
        'gmi critic/discriminator step, 64 px, batch 8, 3 reps; quick; JAX on cpu; PyTorch on cpu'
    )
    assert 'grad norm rel. diff 1.0e-04' in run_all.notes(gan)
    ir = dict(TRAIN, arch='ir152', freeze=True, freeze_layers=47)
    assert 'TL-DMI freeze k=47' in run_all.configuration(ir, bench())
    # One frozen / unfrozen line per arch that has both rows.
    vgg_frozen = dict(TRAIN, freeze=True, jax_s=0.1, torch_s=0.08)
    ir_plain = dict(TRAIN, arch='ir152')
    ir_frozen = dict(ir_plain, freeze=True, jax_s=0.5, torch_s=0.5)
    rows = [(bench(), r) for r in (TRAIN, vgg_frozen, ir_plain, ir_frozen)]
    lines = run_all.freeze_line(rows).split('\n\n')
    assert [line.split(' batch')[0] for line in lines] == ['train_step vgg16', 'train_step ir152']


def test_a_quick_run_does_not_overwrite_the_full_table():
    assert run_all.default_out(quick=False) == os.path.join('bench', 'RESULTS.md')
    assert run_all.default_out(quick=True) == os.path.join('bench', 'RESULTS-quick.md')
