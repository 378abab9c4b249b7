"""Freeze plans of the full-size targets reproduce the original trainable counts."""

import json
import os
import sys

import pytest

from configs import celeba
from tests.launch import crash
from tldmi_jax import defenses

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    'arch, overrides, total, trainable',
    [
        ('vgg16', {}, 16_774_184, 13_855_208),  # official k=26: 13.86 M of 16.78 M
        ('ir152', {}, 62_599_848, 17_827_176),  # official k=46: 17.83 M of 62.60 M
        ('facenet64', {}, 35_437_224, 34_393_832),  # official k=5: 34.39 M of 35.44 M
        ('vgg16', {'freeze_layers': 0}, 16_774_184, 2_051_048),  # VGG k=0: linear probe
        ('ir152', {'freeze_layers': 0}, 62_599_848, 62_599_848),  # IR k=0: no freezing
        ('ir152', {'freeze_stem': True}, 62_599_848, 17_827_176 - 1_920),  # the paper's intent
        ('ir152', {'fine_tune_from': 'stage4'}, 62_599_848, 17_827_176 - 1_920),
        ('vgg16', {'fine_tune_from': 'stage4'}, 16_774_184, 15_036_392),  # conv block 4 on
        ('vgg16', {'fine_tune_from': 'block4'}, 16_774_184, 15_036_392),  # its old name
        ('vgg16', {'fine_tune_from': 'conv4_2'}, 16_774_184, 13_855_208),  # a group: = k=26
    ],
)
def test_official_trainable_counts(arch, overrides, total, trainable):
    config = celeba.get_config(f'arch={arch},defense=tldmi')
    config.defense.update(overrides)
    plan = defenses.describe(config)
    assert (plan.total_params, plan.trainable_params) == (total, trainable)
    assert (
        abs(total - {'vgg16': 16.78e6, 'ir152': 62.60e6, 'facenet64': 35.44e6}[arch]) / total
        < 0.005
    )


def test_describe_launcher_prints_table_and_json():
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'launch', 'describe.py'),
        f'--config={os.path.join(ROOT, "configs", "celeba.py")}:arch=ir152,defense=tldmi',
        '--config.defense.freeze_layers=46',
    ]
    proc = crash.run_here(cmd)  # In this process (test time), as its command line runs it.
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {'total_params': 62_599_848, 'trainable_params': 17_827_176}
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert rows['body_46'][1] == '0' and rows['body_47'][0] == rows['body_47'][1]
    assert rows['stem'] == ['1,920', '1,920']  # trainable, as the original's typo leaves it


def test_describe_includes_the_mid_head():
    plan = defenses.describe(celeba.get_config('arch=vgg16,defense=tldmi+mid'))
    rows = {r.group: r for r in plan.table}
    assert 'vib' in rows and rows['vib'].trainable == rows['vib'].params > 0
    assert rows['conv1_1'].trainable == 0
