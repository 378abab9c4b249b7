"""End to end: launch/demo.py (runlocal, generated idx files), its rerun, and the notebook."""

import base64
import json
import os
import re
import subprocess
import sys

import pytest

from tests import browser
from tests.launch import crash

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'demo.py') + ':runlocal'
TARGETS = ('none', 'tldmi_stage4', 'tldmi_head')


def _demo_cmd(workdir):
    """`(command, directory)` of the demo as `make demo` runs it: a workdir relative to the
    current directory."""
    parent, name = os.path.split(workdir)
    script = os.path.join(ROOT, 'launch', 'demo.py')
    return [sys.executable, script, f'--config={CONFIG}', f'--workdir={name}'], parent


def _run_demo(workdir):
    """Runs the demo as `make demo` does, in a process of its own."""
    cmd, parent = _demo_cmd(workdir)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('demo') / 'run')
    proc = _run_demo(workdir)
    return workdir, proc


def _mtimes(workdir):
    names = ['pretrain/results.json', 'eval_model/results.json', 'fisher/fisher.json']
    names += [f'sweep/cells/{t}__gmi/cell.json' for t in TARGETS]
    names += ['sweep/priors/gmi/results.json']
    return {n: os.stat(os.path.join(workdir, n)).st_mtime_ns for n in names}


def test_demo_writes_every_artefact(demo_run):
    workdir, proc = demo_run
    # Stage progress lines, then the headline sentence.
    assert [f'[demo {i}/5]' in proc.stdout for i in range(1, 6)] == [True] * 5
    # 1. pre-training on the public classes, as a 5-class task.
    with open(os.path.join(workdir, 'pretrain', 'config.json')) as f:
        pre = json.load(f)
    assert pre['data']['train_split'] == 'public_train'
    assert pre['data']['test_split'] == 'public_test'
    # 2. the evaluation model is another architecture.
    with open(os.path.join(workdir, 'eval_model', 'config.json')) as f:
        assert json.load(f)['model']['arch'] == 'resnet18'
    # 3. targets: no defense from scratch; TL-DMI from the pre-training, fewer trainable
    # parameters the later fine-tuning starts.
    trainable = {}
    for t in TARGETS:
        tdir = os.path.join(workdir, 'sweep', 'targets', t)
        with open(os.path.join(tdir, 'config.json')) as f:
            cfg = json.load(f)
        with open(os.path.join(tdir, 'results.json')) as f:
            trainable[t] = json.load(f)['params/trainable']
        if t == 'none':
            assert cfg['defense']['name'] == 'none' and not cfg['init']['checkpoint']
        else:
            assert cfg['defense']['name'] == 'tldmi'
            assert cfg['init']['checkpoint'] == os.path.join(workdir, 'pretrain')
    counts = [trainable[t] for t in TARGETS]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    # The attack and evaluation of every target.
    with open(os.path.join(workdir, 'sweep', 'results.csv')) as f:
        lines = f.read().strip().splitlines()
    assert len(lines) == 1 + len(TARGETS)
    with open(os.path.join(workdir, 'summary.json')) as f:
        summary = json.load(f)
    for row in summary['rows']:
        assert row['status'] == 'done', row
        for key in ('attack/acc@1', 'attack/acc@1_std', 'attack/acc@5', 'attack/knn_dist'):
            assert isinstance(row[key], float), (key, row)
        assert 0.0 <= row['target/natural_acc'] <= 1.0
    # 95 % intervals over the class x seed instances, and the paired change vs no defense.
    by = {r['target']: r for r in summary['rows']}
    for t in TARGETS:
        r = by[t]
        assert r['top1_low'] <= r['attack/acc@1'] <= r['top1_high'] and r['top1_n'] == 5 * 2
        if t == 'none':
            assert 'diff' not in r
            continue
        # Every instance is matched, so the mean change is the change of the means.
        assert r['diff'] == pytest.approx(r['attack/acc@1'] - by['none']['attack/acc@1'])
        assert r['diff_low'] <= r['diff'] <= r['diff_high']
    headline = summary['headline']
    assert headline['acc@1_change_ci95'] == [
        by['tldmi_stage4']['diff_low'],
        by['tldmi_stage4']['diff_high'],
    ]
    assert headline['verdict'] in ('lowered', 'raised', 'did not clearly change')
    assert headline['sentence'].startswith(
        f'TL-DMI (fine-tuning from stage4) {headline["verdict"]} '
    )
    assert '95 % CI' in headline['sentence']
    assert headline['sentence'] in proc.stdout
    assert headline['acc@1_drop'] == pytest.approx(headline['none/acc@1'] - headline['tldmi/acc@1'])
    # 4. Fisher information of the no-defense target, both tasks, every layer group.
    with open(os.path.join(workdir, 'fisher', 'fisher.json')) as f:
        fisher = json.load(f)
    assert [g['group'] for g in fisher['groups']] == [
        'block0',
        'block1',
        'block2',
        'block3',
        'head',
    ]
    assert fisher['target'].endswith(os.path.join('targets', 'none'))
    # 5. the report: every image it names exists; the HTML inlines each of them.
    with open(os.path.join(workdir, 'report.md')) as f:
        report = f.read()
    images = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', report)
    for t in TARGETS:
        assert f'grids/{t}__gmi.png' in images
    assert 'sweep/utility_privacy.png' in images and 'fisher/fisher.png' in images
    for rel in images:
        with open(os.path.join(workdir, rel), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n', rel
    with open(os.path.join(workdir, 'report.html')) as f:
        page = f.read()
    inlined = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(inlined) == len(images)
    assert all(base64.b64decode(s)[:4] == b'\x89PNG' for s in inlined)
    assert '<table>' in page and page.count('<tr>') == 1 + len(TARGETS)
    # Only 5 classes: no top-5 column (it is 1 by construction), but the intervals.
    table = [line for line in report.splitlines() if line.startswith('| target')]
    assert len(table) == 1 and 'top-1 [95 % CI]' in table[0] and 'top-5' not in table[0]


def test_demo_rerun_skips_finished_stages(demo_run):
    workdir, _ = demo_run
    before = _mtimes(workdir)
    cmd, parent = _demo_cmd(workdir)
    proc = crash.run_here(cmd, cwd=parent)  # In this process (test time).
    assert _mtimes(workdir) == before  # Nothing retrained, re-attacked or re-analysed.
    assert 'report:' in proc.stdout


# The kernel's zmq threads may report a closed event loop while the client shuts down.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_colab_notebook_runs(demo_run):
    nbclient = pytest.importorskip('nbclient')
    nbformat = pytest.importorskip('nbformat')
    workdir, _ = demo_run
    nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'tldmi_colab.ipynb'), as_version=4)
    params = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(params) == 1
    params[0].source += f'\nRUNLOCAL = True\nINSTALL = False\nWORKDIR = {workdir!r}\n'
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': ROOT}}
    )
    client.execute()
    pngs = [
        out
        for cell in nb.cells
        if cell.cell_type == 'code'
        for out in cell.get('outputs', [])
        if 'image/png' in out.get('data', {})
    ]
    # Utility plot, Fisher plot and one grid per target.
    assert len(pngs) == 2 + len(TARGETS)
    text = ''.join(
        out.get('text', '') for cell in nb.cells if cell.cell_type == 'code' for out in cell.outputs
    )
    assert 'TL-DMI (fine-tuning from stage4)' in text


def test_every_stage_workdir_holds_only_names_overwrite_may_delete(demo_run):
    """Each stage workdir of the demo (train, GAN, attack, evaluate, Fisher, sweep, demo)
    holds only `workdir.OUTPUT_NAMES`, so `overwrite=True` can replace any of them."""
    from tldmi_jax.utils import workdir as workdir_lib

    top, _ = demo_run
    stage_dirs = [d for d, _, files in os.walk(top) if 'config.json' in files]
    assert len(stage_dirs) >= 12, stage_dirs
    for d in stage_dirs:
        assert workdir_lib.foreign_entries(d) == [], d


def test_report_html_images_load_in_a_browser(demo_run):
    """The demo's report.html in Chromium: every image (inline PNG) has decoded."""
    workdir, _ = demo_run
    with browser.browser() as chromium:
        page = chromium.new_page(viewport={'width': 1000, 'height': 800})
        page.goto('file://' + os.path.join(os.path.abspath(workdir), 'report.html'))
        page.wait_for_load_state('load')
        count = page.evaluate('() => document.images.length')
        assert count >= 5  # Plot, Fisher, grids, prior samples.
        assert browser.broken_images(page) == []
        browser.screenshot(page, 'demo_report.png')
