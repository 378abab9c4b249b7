"""notebooks/tldmi_celeba_reproduce.ipynb on its runlocal setting, end to end, then resumed."""

import csv
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'tldmi_celeba_reproduce.ipynb')
# The plan of `sweep_celeba.py:runlocal` (table=depth): two targets x GMI.
PIECES = (
    'target:none',
    'target:tldmi',
    'eval_model',
    'prior:gmi',
    'cell:none__gmi',
    'cell:tldmi__gmi',
    'results',
)
CELLS = ('none__gmi', 'tldmi__gmi')
# As tests/launch/test_sweep_launcher.py: 20 training steps, one identity batch of 2 x 2;
# no FID (its tiny random Inception costs 2-3 s a cell; the sweep test covers it).
OVERRIDES = {
    'train': {'total_steps': 20, 'eval_every_steps': 20},
    'attack': {'attack': {'steps': 8, 'num_seeds': 2}, 'identities': {'count': 2}},
    'evaluate': {'fid': {'enabled': False}},
}


def _execute(workdir):
    """Runs the notebook with the test's parameters; returns the executed notebook."""
    nbclient = pytest.importorskip('nbclient')
    nbformat = pytest.importorskip('nbformat')
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(params) == 1
    settings = dict(RUNLOCAL=True, INSTALL=False, WORKDIR=workdir, OVERRIDES=OVERRIDES)
    params[0].source += ''.join(f'\n{name} = {value!r}' for name, value in settings.items())
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': ROOT}}
    )
    client.execute()  # Raises CellExecutionError on a cell that errors.
    return nb


def _outputs(nb):
    return [out for cell in nb.cells if cell.cell_type == 'code' for out in cell.outputs]


def _printed(nb):
    return ''.join(out.get('text', '') for out in _outputs(nb) if out.output_type == 'stream')


def _results_table(nb):
    """The displayed Markdown that holds the results table."""
    tables = [
        out['data']['text/markdown']
        for out in _outputs(nb)
        if 'text/markdown' in out.get('data', {}) and '| acc@1 |' in out['data']['text/markdown']
    ]
    assert len(tables) == 1, tables
    return tables[0]


def _pngs(nb):
    return [out for out in _outputs(nb) if 'image/png' in out.get('data', {})]


# The kernel's zmq threads may report a closed event loop while the client shuts down.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_reproduce_notebook_runs_and_resumes(tmp_path):
    workdir = str(tmp_path / 'run')
    nb = _execute(workdir)
    assert not [out for out in _outputs(nb) if out.output_type == 'error']
    printed = _printed(nb)
    for piece in PIECES[:-1]:
        assert f'{piece}: done in ' in printed, printed
    assert 'FAILED' not in printed
    # Both rows of the table, with numbers in their attack accuracy column.
    table = _results_table(nb)
    for target in ('none', 'tldmi'):
        row = [line for line in table.splitlines() if line.startswith(f'| {target} |')]
        assert len(row) == 1, table
        assert re.search(r'\| gmi \| \d\.\d{4} ± \d\.\d{4} \|', row[0]), row[0]
        assert row[0].rstrip(' |').endswith('done'), row[0]
    assert '![' not in table
    # The utility-vs-privacy plot, then one reconstruction grid per cell, each captioned.
    assert len(_pngs(nb)) == 1 + len(CELLS)
    captions = [
        out['data']['text/markdown']
        for out in _outputs(nb)
        if out.get('data', {}).get('text/markdown', '').endswith(' x GMI')
    ]
    assert captions == ['**no defense** x GMI', '**TL-DMI (official k)** x GMI']
    with open(os.path.join(workdir, 'results.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [(r['target'], r['status']) for r in rows] == [('none', 'done'), ('tldmi', 'done')]

    # Run again on the same workdir: every piece is skipped, the same table and images.
    again = _execute(workdir)
    assert not [out for out in _outputs(again) if out.output_type == 'error']
    printed = _printed(again)
    for piece in PIECES:
        assert f'{piece}: skip (finished)' in printed, printed
    assert 'done in ' not in printed and 'FAILED' not in printed
    assert _results_table(again) == table
    assert [p['data']['image/png'] for p in _pngs(again)] == [
        p['data']['image/png'] for p in _pngs(nb)
    ]
