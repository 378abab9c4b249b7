"""End to end: launch/convert.py on a tiny TL-DMI VGG16 checkpoint, then classifiers.load."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.launch import crash
from tldmi_jax import classifiers

torch = pytest.importorskip('torch')
tnn = torch.nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTHS, DEPTHS, SIZE = (8, 16, 32, 64, 64), (2, 2, 3, 3, 3), 64


def tiny_tldmi_vgg16(num_classes):
    """TL-DMI `VGG16` layout at the widths of `vgg16_tiny`: (feature, bn, fc_layer)."""
    layers, cin = [], 3
    for width, depth in zip(WIDTHS, DEPTHS, strict=True):
        for _ in range(depth):
            layers += [tnn.Conv2d(cin, width, 3, padding=1), tnn.BatchNorm2d(width), tnn.ReLU()]
            cin = width
        layers.append(tnn.MaxPool2d(2))
    net = tnn.Module()
    net.feature = tnn.Sequential(*layers)
    net.bn = tnn.BatchNorm1d(WIDTHS[-1] * 4)
    net.fc_layer = tnn.Linear(WIDTHS[-1] * 4, num_classes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, tnn.BatchNorm1d | tnn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def command(*args):
    """`python launch/convert.py ARGS`."""
    return [sys.executable, os.path.join(ROOT, 'launch', 'convert.py'), *args]


def run(*args):
    """`command(*args)` in a process of its own."""
    return subprocess.run(command(*args), cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_convert_launcher_then_load_classifier(tmp_path):
    torch.manual_seed(0)
    net = tiny_tldmi_vgg16(num_classes=6)
    src = tmp_path / 'VGG16_tiny.tar'
    # As the released targets: nested under 'state_dict', saved from nn.DataParallel.
    torch.save({'state_dict': {f'module.{k}': v for k, v in net.state_dict().items()}}, src)
    dst = tmp_path / 'converted'
    args = ('--kind=vgg16', f'--src={src}', f'--dst={dst}', '--arch=vgg16_tiny')
    # In this process (test time), as its command line runs it; the tests below start one.
    proc = crash.run_here(command(*args, f'--image_size={SIZE}'))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['arch'] == 'vgg16_tiny' and report['num_classes'] == 6
    assert 'bn.bias' in report['ignored'] and not report['left_fresh']
    assert json.loads((dst / 'conversion.json').read_text()) == report

    model, variables = classifiers.load(str(dst))
    x = np.random.default_rng(0).uniform(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        feature = net.bn(net.feature(torch.from_numpy(x)).flatten(1))
        logits = net.fc_layer(feature).numpy()
    apply = jax.jit(functools.partial(model.apply, train=False))  # One program (test time).
    _, got = apply(variables, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(got), logits, rtol=0, atol=1e-4)


def test_convert_launcher_reports_errors(tmp_path):
    proc = run('--kind=ir152', f'--src={tmp_path / "missing.tar"}', f'--dst={tmp_path / "out"}')
    assert proc.returncode != 0
    assert 'missing.tar' in proc.stderr and 'not found' in proc.stderr


def test_convert_refuses_to_replace_the_current_directory(tmp_path):
    (tmp_path / 'notes.txt').write_text('my notes')
    cmd = command('--kind=vgg16', '--src=missing.tar', '--dst=.')
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f'error: refusing to replace {tmp_path}')
    assert sorted(os.listdir(tmp_path)) == ['notes.txt']
