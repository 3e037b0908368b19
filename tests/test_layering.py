"""The package's floors: every import goes down a floor (or stays in its own room), never up.

``docs/architecture.md`` draws the floors; this test keeps the drawing true. Imports inside
functions count too: a lazy import that climbs is still a dependency that climbs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: room -> floor. A module may import its own room and any lower floor.
FLOORS = {
    "errors": 0,
    "_files": 1, "_text": 1, "paper": 1, "executors": 1,
    "lora": 2,
    "spectra": 3, "factory": 3,
    "estimation": 4, "dataset": 4,
    "evaluation": 5, "leak": 5,
    "cli": 6,
}  # fmt: skip


def _room(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if parts[0] == "lora_wise" and len(parts) > 1 else None


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved against ``path``."""
    if node.level == 0:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _names(node: ast.AST, path: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        module = _absolute(node, path)
        return [module] + [f"{module}.{a.name}" for a in node.names]
    return []


def _imports(path: Path) -> list[str]:
    return [name for node in ast.walk(ast.parse(path.read_text())) for name in _names(node, path)]


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_lora_wise_imports_never_climb_a_floor():
    climbs = []
    for path in _modules("lora_wise"):
        rel = path.relative_to(ROOT / "lora_wise")
        if rel.parts == ("__init__.py",):
            continue  # the lazy public API names everything by design
        room = rel.parts[0].removesuffix(".py")
        assert room in FLOORS, f"{rel}: a room the floor plan does not know; add it to FLOORS and the docs"
        for target in _imports(path):
            other = _room(target)
            if other is None or other == room or other not in FLOORS:
                continue
            if FLOORS[other] >= FLOORS[room]:
                climbs.append(f"{rel} imports {target} (floor {FLOORS[other]} from floor {FLOORS[room]})")
    assert not climbs, "\n".join(climbs)


def test_lora_wise_never_imports_the_scanner():
    offenders = [f"{p.relative_to(ROOT)}: {t}" for p in _modules("lora_wise") for t in _imports(p)
                 if t == "scanner" or t.startswith("scanner.")]  # fmt: skip
    assert not offenders, offenders


def test_scanner_library_never_imports_cli_modules():
    """Only the scanner's click layers (``cli.py`` files) may use the CLI helpers."""
    offenders = []
    for path in _modules("scanner"):
        if path.name == "cli.py":
            continue
        for target in _imports(path):
            if target.startswith(("lora_wise.cli", "scanner.cli", "scanner.crawl.cli")):
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not offenders, "\n".join(offenders)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
    return ".".join(parts)


def _dependencies(path: Path, known: set[str]) -> set[str]:
    """Our modules that ``path`` imports, lazily or not (its own packages do not count)."""
    me = _module_name(path)
    return {n for n in _imports(path) if n in known and n != me and not me.startswith(n + ".")}


def test_no_import_cycles():
    """Counting imports inside functions too: a lazy import that closes a loop is still a loop."""
    paths = _modules("lora_wise") + _modules("scanner")
    known = {_module_name(p) for p in paths}
    graph = {_module_name(p): _dependencies(p, known) for p in paths}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            raise AssertionError("import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]) :]))
