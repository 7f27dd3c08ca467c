"""The stages of pathodet import one way: each package only from itself and earlier stages.

Read from the source (no import is executed), so a new module is checked the day it lands.
docs/architecture.md draws the same order.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pathodet"

STAGES = [
    "core",  # atomic io, the config base, precision and threads, distributed, progress
    "data",
    "model",
    "losses",
    "training",
    "predict",
    "eval",
    "purify",
    "review",
    "demo",
    "bench",
    "cli",
]
"""In dependency order: a module may import from its own stage and the ones before it."""


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    parts = parts[len(parts) - 1 - parts[::-1].index("pathodet") :]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    """``pathodet.predict.windows`` -> ``predict``; the package root counts as ``core``
    (it holds the version), ``pathodet.__main__`` as ``cli``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    return "cli" if parts[1] == "__main__" else parts[1]


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The pathodet modules ``path`` imports (every import, or only those run at import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _module_name(path)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = own.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name.startswith("pathodet"):
                # `from pathodet.x import y`: y is a name of x, or the submodule x.y
                subs = {f"{name}.{a.name}" for a in node.names}
                known = subs & set(_modules())
                found.update(known)
                if known != subs:
                    found.add(name)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pathodet"))
    return found


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_package_is_a_known_stage():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(STAGES), "add the new package to STAGES (and docs/architecture.md)"
    assert not [
        p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    ]


def test_no_module_imports_a_later_stage():
    order = {s: i for i, s in enumerate(STAGES)}
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        mine = order[_stage(name)]
        for target in _imports(path):
            if target not in modules:  # a name imported from a module, not a module
                target = target.rsplit(".", 1)[0]
            if target not in modules:
                continue
            theirs = order[_stage(target)]
            if theirs > mine:
                wrong.append(f"{name} ({STAGES[mine]}) imports {target} ({STAGES[theirs]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path, top_level_only=True):
            if target in modules and target != name:
                graph[name].add(target)
    # iterative DFS with colours: grey on the stack, black done
    colour: dict[str, int] = {}
    for start in modules:
        if colour.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start] = 1
        path = [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child) == 1:
                cycle = path[path.index(child) :] + [child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            elif not colour.get(child):
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)


def test_the_checker_sees_a_violation(tmp_path):
    """Guard: the parser finds a later-stage import written inside a function."""
    fake = tmp_path / "pathodet" / "data"
    fake.mkdir(parents=True)
    module = fake / "x.py"
    module.write_text("def f():\n    from pathodet.predict.windows import merge\n")
    assert "pathodet.predict.windows" in _imports(module)
