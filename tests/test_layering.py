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
    "_files": 1, "paper": 1, "executors": 1,
    "lora": 2,
    "spectra": 3, "factory": 3,
    "estimation": 4, "dataset": 4,
    "evaluation": 5, "leak": 5,
    "cli": 6,
}  # fmt: skip


def _room(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if parts[0] == "lora_wise" and len(parts) > 1 else None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


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
