"""The house's import arrows (docs/architecture.md): they run one way, and the readers of result
files never reach the runner. Checked on the source, deferred imports inside functions included,
since a deferred import still ties the two modules together."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CURB = Path(__file__).resolve().parents[1] / "curb"
READERS = ("report", "leaderboard", "plots", "export", "sections", "claims", "resultsets", "tables", "compare", "site",
           "document", "stats", "records", "paper")


def imports_of(path: Path) -> set[str]:
    """The curb modules a file imports (`from .x import`, `from . import x`, `curb.x`), anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out |= {a.name for a in node.names}
            elif node.module and node.module.startswith("curb."):
                out.add(node.module.split(".")[1])
    return {m for m in out if (CURB / f"{m}.py").exists()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) for p in CURB.glob("*.py")}


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_graph_has_no_cycle(graph):
    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a in graph for b in graph[a] if a in reach(graph, b) | {b})
    assert not cycles, cycles


def test_readers_of_result_files_never_reach_the_runner(graph):
    assert {"runner", "config", "cli"} <= set(graph)  # the check would pass vacuously on a renamed module
    bad = {r: sorted(reach(graph, r) & {"runner", "grid", "cli", "backbone", "training"}) for r in READERS}
    assert not {r: v for r, v in bad.items() if v}, bad


def test_the_checker_sees_a_cycle(tmp_path):
    """The parser itself: a deferred import inside a function counts."""
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    global CURB
    saved, CURB = CURB, tmp_path
    try:
        g = {p.stem: imports_of(p) for p in tmp_path.glob("*.py")}
    finally:
        CURB = saved
    assert g == {"a": {"b"}, "b": {"a"}} and "a" in reach(g, "b")
