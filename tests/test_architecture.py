"""The shape the design promises, checked on the source: one pipeline, no import cycles,
a memo and an edge that know no stage's insides, one helper for suffix walks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from resolver.names import in_zones, suffixes

ROOT = Path(__file__).resolve().parents[1] / "resolver"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions: those are deliberate and lazy)."""
    tree = ast.parse(path.read_text())
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.If):   # TYPE_CHECKING blocks do not run
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if (ROOT.parent / (full.replace(".", "/") + ".py")).exists() else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("resolver")}


GRAPH = {_module(p): _imports(p) for p in ROOT.rglob("*.py")}


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in GRAPH.get(m, ()):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path + [m, n]))
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m, [])


def test_the_memo_and_the_edge_import_no_stage() -> None:
    for mod in ("resolver.memo", "resolver.server"):
        assert not {m for m in GRAPH[mod] if m.startswith("resolver.stages")}, mod


def test_no_module_reads_a_stages_private_attributes() -> None:
    stage_classes = {"Access", "RateLimit", "Blocking", "Cache", "Rebind", "Forward"}
    for path in ROOT.rglob("*.py"):
        if "stages" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "stages" in node.module:
                assert all(not a.name.startswith("_") for a in node.names), path
        assert "fastpath" not in path.read_text(), path
    assert stage_classes   # the names a stage can be found by (Pipeline.find) are its classes


def test_server_does_not_drive_queries_through_stages() -> None:
    text = (ROOT / "server.py").read_text()
    for word in ("on_query", "on_answer", ".resolve(", "coro.send"):
        assert word not in text, word


def test_suffix_helper() -> None:
    assert list(suffixes("a.b.c")) == ["a.b.c", "b.c", "c"]
    assert in_zones("tv.in.lan", {"lan", "in.lan"}) == "in.lan"
    assert in_zones("evil-lan", {"lan"}) is None
