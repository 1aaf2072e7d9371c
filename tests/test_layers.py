"""The package's layers: imports only go down, and no two modules import each other at import time.

Layers, bottom to top (DESIGN.md): the shared helpers (``_util``, ``_registry``, ``_resources``), ``datasets``,
``models``, ``training``, ``analysis``, ``experiments``, ``reports``, ``leaderboard``, ``cli``. A module may import its
own layer and any layer below, at module level or inside a function alike.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'pyterrier_knowacq'
LAYERS = [('_util', '_registry', '_resources', 'results'), ('datasets',), ('models',), ('training',), ('analysis',),
          ('experiments',), ('reports',), ('leaderboard',), ('cli',)]
MAX_LINES = 450   # "~400 lines": a module past this is split by concern


def _layer(module: str):
    parts = module.split('.')
    if len(parts) == 1:
        return None   # the package's __init__: a facade that re-exports lazily
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), None)


def _modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE.parent).with_suffix('').parts
        is_pkg = rel[-1] == '__init__'
        yield path, '.'.join(rel[:-1] if is_pkg else rel), is_pkg


def _imports(path: Path, module: str, is_pkg: bool):
    """``(line, target module, at module level)`` for each import of this package's modules."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split('.') if is_pkg else module.split('.')[:-1]
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            names = [target] if node.module else [f'{target}.{a.name}' for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split('.')[0] == 'pyterrier_knowacq':
                yield node.lineno, name, id(node) in top


def test_every_module_has_a_layer():
    orphans = [m for _, m, _ in _modules() if m != 'pyterrier_knowacq' and _layer(m) is None]
    assert orphans == [], f'modules outside the layers {LAYERS}: {orphans}; move them into a subpackage'


def test_imports_only_go_down():
    upward = []
    for path, module, is_pkg in _modules():
        here = _layer(module)
        for line, target, _ in _imports(path, module, is_pkg):
            there = _layer(target)
            if here is not None and there is not None and there > here:
                upward.append(f'{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}')
    assert upward == [], 'upward imports:\n' + '\n'.join(upward)


def test_no_import_cycles_at_module_level():
    modules = {m: (p, pkg) for p, m, pkg in _modules()}
    graph = {}
    for m, (path, is_pkg) in modules.items():
        deps = set()
        for _, target, top in _imports(path, m, is_pkg):
            while target and target not in modules:   # `from .x import name` names module x
                target = target.rpartition('.')[0]
            if top and target and target != m and target != 'pyterrier_knowacq':
                deps.add(target)
        graph[m] = deps
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 'open'
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 'open':
                cycles.append(' -> '.join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 'done'
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], 'import cycles:\n' + '\n'.join(cycles)


def test_modules_stay_small():
    big = {str(p.relative_to(PACKAGE.parent)): n for p, _, _ in _modules()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f'modules over {MAX_LINES} lines (split them by concern): {big}'


def test_the_scanner_sees_an_upward_import(tmp_path, monkeypatch):
    # the checks above can fail: a models module importing the experiment runner is reported
    pkg = tmp_path / 'pyterrier_knowacq' / 'models'
    pkg.mkdir(parents=True)
    (pkg / 'x.py').write_text('def f():\n    from ..experiments.runner import run_experiment\n')
    monkeypatch.setattr(__import__(__name__), 'PACKAGE', tmp_path / 'pyterrier_knowacq')
    with pytest.raises(AssertionError, match='models.x imports pyterrier_knowacq.experiments.runner'):
        test_imports_only_go_down()
