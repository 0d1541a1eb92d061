"""Nothing reaches into a private name of the demo or of fedge.federation from outside.

Benchmarks, examples and tests once imported `_aggregator_config`, `_run_all` and friends
from fedge.demo; they now build federations with fedge.federation and the demo's public
functions. This scans every Python file of the repository for `from M import _name` and
`M._name`, where M is one of those modules and not the file's own.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUARDED = ("fedge.demo", "fedge.federation", "fedge.digits_job")  # and their submodules
SCANNED = ("fedge", "benchmarks", "examples", "tests", "scripts", "aggregator",
           "edge_client", "firmware_bridge")


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def _guarded(module: str, own: str) -> bool:
    return module != own and module.startswith(GUARDED)


def _private_uses(source: str, own: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                and _guarded(node.module, own)):
            found += [f"from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            dotted = _dotted(node.value)
            if dotted and _guarded(dotted, own):
                found.append(f"{dotted}.{node.attr}")
    return found


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def test_no_file_uses_a_private_name_of_a_fedge_module():
    offenders = {}
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            uses = _private_uses(path.read_text(), _module_of(path))
            if uses:
                offenders[str(path.relative_to(REPO))] = uses
    assert offenders == {}


def test_the_scan_sees_a_private_import():
    source = ("from fedge.demo import _profile, run_demo\nimport fedge.federation.builder\n"
              "fedge.federation.builder._x\nfrom fedge.cli import _log_level\n")
    assert _private_uses(source, "benchmarks.x") == [
        "from fedge.demo import _profile", "fedge.federation.builder._x"]
    assert _private_uses(source, "fedge.demo") == ["fedge.federation.builder._x"]
