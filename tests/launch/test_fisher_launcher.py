"""End to end: launch/fisher.py with runlocal."""

import json
import math
import os

from tests.launch import crash


def test_runlocal_writes_json_csv_and_plot(tmp_path):
    workdir = str(tmp_path / 'fisher')
    # In this process (test time), as its command line runs it.
    proc = crash.run_here(crash.command('fisher', 'fisher_celeba.py:runlocal', workdir))
    with open(os.path.join(workdir, 'fisher.json')) as f:
        result = json.load(f)
    groups = result['groups']
    # The tiny IR target's layer groups, input to output.
    assert [g['group'] for g in groups] == ['stem', 'body_0', 'body_1', 'body_2', 'body_3', 'head']
    # Each group's cut-point name (`defense.fine_tune_from`), where it starts a stage.
    assert [g['cut_point'] for g in groups][:2] == ['stem', 'stage1']
    assert groups[-1]['cut_point'] == 'head'
    for task in ('classification', 'mi'):
        values = [g[task] for g in groups]
        assert all(math.isfinite(v) and v >= 0.0 for v in values) and max(values) > 0.0
        assert max(g[f'{task}_normalised'] for g in groups) == 1.0
    assert result['num_examples'] == {'classification': 128, 'mi': 20}  # 4 identities x 5 GMI seeds
    assert os.path.getsize(os.path.join(workdir, 'fisher.png')) > 1000
    assert os.path.exists(os.path.join(workdir, 'fisher.csv'))
    assert 'stem' in proc.stdout and 'num_examples' in proc.stdout
    # A progress bar per task, counting examples.
    assert 'fisher (classification): 100%' in proc.stderr and '128/128' in proc.stderr
    assert 'fisher (MI): 100%' in proc.stderr and '20/20' in proc.stderr
