"""The layers of docs/architecture.md, enforced on the imports of every module.

Each module of `tldmi_jax/` (and each launcher) belongs to a unit (`utils`, `models`,
`attacks`, ...); units sit in layers, and a module imports only from its own unit and from
units in lower layers, plus the few same-layer arrows listed in `SIDEWAYS`. The stages
(`train`, `attacks`, `evaluation`, `analysis`) never import one another; only `pipelines`
chains them. Imports inside functions count as well (and are not allowed for this
package's own modules: every dependency shows at the top of its file), and the module
graph has no circle.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'tldmi_jax'

# Lowest first. A unit is a subpackage or a top-level module of tldmi_jax, or `launch`.
LAYERS = (
    ('utils', 'config_lib', 'config_checks'),
    ('models', 'data', 'reconstructions'),
    ('defenses', 'priors', 'interop', 'reporting', 'classifiers'),
    ('train', 'attacks', 'evaluation', 'analysis', 'userstudy'),
    ('pipelines',),
    ('launch',),
)
# Allowed imports between two units of the same layer (importer, imported), with the reason.
SIDEWAYS = {
    ('utils', 'config_lib'): 'the workdir guard serialises configs',
    ('utils', 'config_checks'): 'the workdir guard checks the ranges before anything is written',
    ('classifiers', 'defenses'): 'a MID checkpoint is rebuilt with its VIB head',
    ('interop', 'priors'): 'GAN converters write priors',
}
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, str]:
    """`{dotted module name: file}` of the package and the launchers."""
    found = {}
    for top in (PACKAGE, 'launch'):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith('.py'):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)[: -len('.py')].split(os.sep)
                if rel[-1] == '__init__':
                    rel = rel[:-1]
                found['.'.join(rel)] = path
    return found


MODULES = _modules()


def _unit(module: str) -> str:
    parts = module.split('.')
    return 'launch' if parts[0] == 'launch' else parts[1] if len(parts) > 1 else PACKAGE


def _imports(path: str) -> list[tuple[str, int, bool]]:
    """`(imported module, line, inside a function)` for every import of this package."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:  # `from a.b import c`: the module a.b.c if it is one.
                    sub = f'{child.module}.{alias.name}'
                    out.append((sub if sub in MODULES else child.module, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(m, line, f) for m, line, f in out if m.split('.')[0] == PACKAGE]


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES} - {PACKAGE}
    assert units <= set(RANK), sorted(units - set(RANK))
    assert len(MODULES) > 80


def test_imports_only_go_down_the_layers():
    bad = []
    for module, imports in GRAPH.items():
        src = _unit(module)
        for target, line, _ in imports:
            dst = _unit(target)
            if dst == src or dst == PACKAGE:
                continue
            if RANK[dst] < RANK[src] or (src, dst) in SIDEWAYS:
                continue
            bad.append(f'{MODULES[module]}:{line}: {src} -> {dst} ({target})')
    assert not bad, 'imports against the layers:\n' + '\n'.join(bad)


def test_no_stage_imports_another_stage_or_a_pipeline():
    stages = set(LAYERS[3])
    bad = [
        f'{MODULES[m]}:{line}: {target}'
        for m, imports in GRAPH.items()
        if _unit(m) in stages
        for target, line, _ in imports
        if _unit(target) != _unit(m) and _unit(target) in stages | {'pipelines', 'launch'}
    ]
    assert not bad, bad


def test_no_package_import_hides_inside_a_function():
    hidden = [
        f'{MODULES[m]}:{line}: {target}'
        for m, imports in GRAPH.items()
        for target, line, in_function in imports
        if in_function
    ]
    assert not hidden, hidden


def test_no_import_circle():
    edges = {m: sorted({t for t, _, _ in imports if t in MODULES}) for m, imports in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished.
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                circle = path[path.index(nxt) :] + [nxt]
                pytest.fail('import circle: ' + ' -> '.join(circle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_violation(tmp_path):
    """The parser finds top-level and function-level imports (so the tests above can fail)."""
    path = tmp_path / 'm.py'
    path.write_text(
        'import os\nfrom tldmi_jax.train import classifier\n\n\n'
        'def f():\n    from tldmi_jax.pipelines import sweep\n'
    )
    assert _imports(str(path)) == [
        ('tldmi_jax.train.classifier', 2, False),
        ('tldmi_jax.pipelines.sweep', 6, True),
    ]
    assert _unit('tldmi_jax.attacks.runner') == 'attacks' and _unit('launch.train') == 'launch'
    assert RANK['attacks'] > RANK['reporting'] > RANK['models'] > RANK['utils']
