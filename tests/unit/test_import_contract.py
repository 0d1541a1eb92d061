"""The layering contract, checked on the source with `ast` (docs/architecture.md).

The device SDK (edge_client) must install and run without the gateway, the CLI or the
firmware bridge; the bridge runs beside a device and needs no gateway; and the gateway
uses the shared layer of edge_client, never the device loop, its trainers or its probes.
Every import counts: module level, inside functions, under TYPE_CHECKING, and literal
`importlib.import_module` calls, because each one is a dependency someone can hit.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Rule:
    """Modules of package `source` must not import any of `forbidden` (or their parts)."""

    source: str
    forbidden: tuple[str, ...]
    why: str


# edge_client's own modules outside the shared layer: the device loop and what it drives.
DEVICE_ONLY = tuple(sorted(
    p.stem if p.is_file() else p.name
    for p in (ROOT / "edge_client").iterdir()
    if p.name not in ("shared", "__init__.py", "__pycache__")
    and (p.suffix == ".py" or (p / "__init__.py").exists())))

RULES = (
    Rule("edge_client", ("aggregator", "fedge", "firmware_bridge"),
         "the device SDK stands alone"),
    Rule("firmware_bridge", ("aggregator",), "the bridge runs beside a device, not a gateway"),
    Rule("aggregator", tuple(f"edge_client.{m}" for m in DEVICE_ONLY),
         "the gateway reaches into edge_client only through edge_client.shared"),
    Rule("edge_client.shared", tuple(f"edge_client.{m}" for m in DEVICE_ONLY),
         "the shared layer stands on its own, below the device loop"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module `source` (the text of `module`) imports, by absolute name.

    `from a import b` yields both `a` and `a.b`: b may be a submodule, and naming a
    forbidden parent (`from edge_client import training`) must not slip through.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and _is_import_call(node.func) and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def _is_import_call(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def violations(rule: Rule, modules: dict[str, set[str]]) -> list[str]:
    """'module imports target' for every import that breaks `rule`."""
    return sorted(f"{module} imports {target}"
                  for module, targets in modules.items()
                  if module == rule.source or module.startswith(rule.source + ".")
                  for target in targets
                  if any(target == f or target.startswith(f + ".") for f in rule.forbidden))


def package_imports(package: str) -> dict[str, set[str]]:
    modules = {}
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        name = module_name(path)
        modules[name] = imported_modules(path.read_text(encoding="utf-8"), name,
                                         path.name == "__init__.py")
    return modules


@pytest.mark.parametrize("rule", RULES, ids=[r.source for r in RULES])
def test_the_layers_hold(rule: Rule) -> None:
    modules = package_imports(rule.source)
    assert len(modules) > 5, f"found no source for {rule.source} under {ROOT}"
    broken = violations(rule, modules)
    assert not broken, f"{rule.source}: {rule.why}; but " + ", ".join(broken)


@pytest.mark.parametrize("source, module, expected", [
    ("import aggregator.service", "edge_client.client", "aggregator.service"),
    ("from fedge import cli", "edge_client.x", "fedge.cli"),
    ("def f():\n    from firmware_bridge.link import Ack", "edge_client.x",
     "firmware_bridge.link.Ack"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import aggregator",
     "edge_client.x", "aggregator"),
    ("import importlib\nimportlib.import_module('aggregator.web')", "edge_client.x",
     "aggregator.web"),
    ("from aggregator.web import app", "firmware_bridge.bridge", "aggregator.web.app"),
    ("from edge_client import training", "aggregator.service", "edge_client.training"),
    ("import edge_client.eligibility.power", "aggregator.service",
     "edge_client.eligibility.power"),
])
def test_the_checker_sees_every_form_of_import(source: str, module: str,
                                               expected: str) -> None:
    found = imported_modules(source, module, is_package=False)
    assert expected in found
    rule = next(r for r in RULES if module.startswith(r.source + ".")
                and r.source != "edge_client.shared")
    assert f"{module} imports {expected}" in violations(rule, {module: found})


@pytest.mark.parametrize("source, module, is_package, expected", [
    ("from ...eligibility import policy", "edge_client.shared.protocol.x", False,
     "edge_client.eligibility.policy"),
    ("from .store import Store", "aggregator.service", False, "aggregator.store.Store"),
    ("from . import client", "edge_client", True, "edge_client.client"),
    ("from ... import client", "edge_client.shared.secagg", True, "edge_client.client"),
])
def test_relative_imports_resolve(source: str, module: str, is_package: bool,
                                  expected: str) -> None:
    assert expected in imported_modules(source, module, is_package)


def test_device_only_modules_are_found() -> None:
    assert {"client", "training", "eligibility", "outbox"} <= set(DEVICE_ONLY)
    assert not {"protocol", "codecs", "secagg", "settings"} & set(DEVICE_ONLY)


def test_shared_imports_are_allowed() -> None:
    found = imported_modules("from edge_client.shared.protocol import Task\n"
                             "from edge_client.training_free import x\n"
                             "import aggregator.secagg.server", "aggregator.service", False)
    rule = next(r for r in RULES if r.source == "aggregator")
    assert violations(rule, {"aggregator.service": found}) == []


def loaded_by(statement: str, prefixes: tuple[str, ...]) -> set[str]:
    """The modules starting with one of `prefixes` that `statement` loads in a fresh
    interpreter (this process has long since imported everything)."""
    code = (f"import sys\n{statement}\n"
            f"print(' '.join(m for m in sys.modules if m.startswith({prefixes!r})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_a_device_loads_no_secagg_server() -> None:
    """The SecAgg server (the gateway's half of secure aggregation) and the gateway itself
    stay unloaded on a device."""
    loaded = loaded_by("import edge_client.client, edge_client.secagg_session",
                       ("edge_client.shared.secagg.", "aggregator", "fedge", "firmware_bridge"))
    assert "edge_client.shared.secagg.client" in loaded  # the check looks where the server would be
    assert "aggregator.secagg.server" not in loaded
    assert not {m for m in loaded if not m.startswith("edge_client.")}, loaded


def test_a_device_without_security_loads_no_cryptography() -> None:
    """Keys, signatures, secure rounds, pycryptodome and the inference runtimes are imported
    where they are used: a device that configures none of them loads none of them."""
    optional = ("cryptography", "Crypto", "Cryptodome", "onnxruntime", "ai_edge_litert",
                "tflite_runtime", "onnx", "edge_client.shared.secagg",
                "edge_client.shared.identity", "edge_client.secagg_session")
    assert loaded_by("import edge_client.client", optional) == set()


def test_fedge_device_loads_no_gateway_code() -> None:
    """`fedge device` builds only its own command's parser: the demo, the aggregator and
    cryptography stay unloaded (benchmarks/footprint.py measures what that saves)."""
    statement = ("import contextlib, io\nfrom fedge.cli import main\n"
                 "with contextlib.redirect_stdout(io.StringIO()), "
                 "contextlib.suppress(SystemExit):\n    main(['device', '--help'])\n"
                 "import fedge.roles")
    assert loaded_by(statement, ("aggregator", "cryptography", "fedge.demo", "sqlite3")) == set()
