"""The package layout of docs/ARCHITECTURE.md holds: no import cycle inside addon/ (every import
counts, also those inside functions), the server imports only addon.protocol from the add-on,
addon.protocol imports nothing else of the add-on and no bpy, and no file sits loose in addon/."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

ADDON = ROOT / "addon"
ROOMS = {"protocol", "backend", "scene", "ui", "cli", "rig"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module (absolute name) that `path` imports anywhere in its body."""
    mod = _module(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import module` imports that module too
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() \
                        or (ROOT / Path(*candidate.split(".")) / "__init__.py").exists():
                    found.add(candidate)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ADDON.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        # A module's package __init__ runs first, but that is not an edge of the module itself.
        graph[mod] = {m for m in _imports(path) if m in files and m != mod}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_inside_the_addon() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_server_imports_only_the_protocol_of_the_addon() -> None:
    bad = {}
    for path in (ROOT / "server").rglob("*.py"):
        used = {m for m in _imports(path) if m == "addon" or m.startswith("addon.")}
        wrong = sorted(m for m in used if m != "addon.protocol" and not m.startswith("addon.protocol."))
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert not bad, bad


def test_protocol_stands_alone() -> None:
    for path in (ADDON / "protocol").rglob("*.py"):
        used = _imports(path)
        assert "bpy" not in used and "mathutils" not in used, path
        others = sorted(m for m in used if m.startswith("addon.") and not m.startswith("addon.protocol"))
        assert not others, (path, others)


def test_every_file_sits_in_a_room() -> None:
    loose = sorted(p.name for p in ADDON.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"files loose in addon/: {loose}"
    assert {p.name for p in ADDON.iterdir() if p.is_dir() and p.name != "__pycache__"} == ROOMS
