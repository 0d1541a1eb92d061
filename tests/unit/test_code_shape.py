"""No oversized modules or classes in the packages (docs/architecture.md, issue 14).

A module over about 400 lines or a class over about 200 is where a newcomer gets lost
and where unrelated changes collide; split it along its ideas instead (a file per idea).
Lines are counted as `wc -l` does; a class from its `class` line to its last line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge_client", "aggregator", "firmware_bridge", "fedge")
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200

# Files allowed past the limits, each with the reason; none since issue 14 landed.
EXEMPT: frozenset[str] = frozenset()  # the rewrites of issue 14 have landed: none


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_exempt_files_exist() -> None:
    """A stale entry would hide nothing and mislead; drop it when its file goes."""
    assert {name for name in EXEMPT if not (ROOT / name).is_file()} == set()


def test_every_module_is_at_most_400_lines() -> None:
    too_long = {}
    for path in _modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES and _name(path) not in EXEMPT:
            too_long[_name(path)] = lines
    assert too_long == {}, f"modules over {MAX_MODULE_LINES} lines (split them): {too_long}"


def test_every_class_is_at_most_200_lines() -> None:
    too_long = {}
    for path in _modules():
        if _name(path) in EXEMPT:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_long[f"{_name(path)}::{node.name}"] = lines
    assert too_long == {}, f"classes over {MAX_CLASS_LINES} lines (split them): {too_long}"
