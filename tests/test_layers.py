"""The package's layers (README "Layout"): imports go down, never up or sideways between domains,
and no module imports itself back through others (the lazy format dispatcher in cfgen/io/ aside).
Read from the source with ast, lazy imports inside functions included; no torch needed."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "cfgen"
#: lower numbers are lower layers; a package may import only from lower ones (or itself)
RANKS = {"errors": 0, "startup": 0.5, "cfgen": 1, "io": 2, "metrics": 2, "captions": 2, "journal": 2.5, "viz": 2.75, "report": 3,
         "models": 4, "editing": 5, "phantoms": 6, "evaluation": 6, "training": 6, "synthesis": 6, "api": 6.5,
         "cli": 7, "__main__": 8}
#: the package root re-exports the API lazily (PEP 562 __getattr__: `cfgen.edit` imports cfgen.api on
#: first use), the one import that goes up; nothing imports the root's names back at import time
LAZY_REEXPORT = ("cfgen", "cfgen.api")
CIRCLE_ALLOWED = "cfgen.io"  # scan.py dispatches to the format modules, which use its Scan type


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = ["cfgen", *p.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = p
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cfgen"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in mods else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cfgen")}
    return found


def _package(module: str) -> str:
    """cfgen.editing.core -> editing; cfgen.report -> report; cfgen -> cfgen."""
    parts = module.split(".")
    return "cfgen" if len(parts) == 1 else parts[1]


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: {t for t in _imports(p, mods) if t in mods} for m, p in mods.items()}
    graph[LAZY_REEXPORT[0]].discard(LAZY_REEXPORT[1])
    return graph


def test_every_package_has_a_layer():
    assert {_package(m) for m in _graph()} <= set(RANKS)


def test_imports_go_down_the_layers_only():
    wrong = []
    for src, targets in _graph().items():
        a = _package(src)
        for dst in targets:
            b = _package(dst)
            if a != b and RANKS[b] >= RANKS[a]:
                wrong.append(f"{src} -> {dst}")
    assert not wrong, wrong


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_except_the_io_dispatcher():
    circles = _cycles(_graph())
    assert all(all(m.startswith(CIRCLE_ALLOWED + ".") for m in c) for c in circles), circles


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_circle_finder_finds_circles(graph, expected):
    assert _cycles(graph) == expected
