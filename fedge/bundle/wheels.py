"""The wheels in a bundle: fedge itself, and its dependencies for the target.

pip does the work: `pip wheel` builds fedge from its source tree, `pip download` fetches
the dependencies for the target's platform (never building anything), from whatever
index and find-links this machine's pip is set up with.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from fedge.bundle.inputs import BundleError, PipFailed
from fedge.bundle.targets import Target

SOURCE_TREE = Path(__file__).resolve().parent.parent.parent  # holds pyproject.toml in a checkout


def fedge_wheel(given: Path | None, dest: Path) -> Path:
    """The --fedge-wheel given, or one built from the checkout this module runs from."""
    if given is not None:
        if not given.is_file() or not given.name.startswith("fedge-") or given.suffix != ".whl":
            raise BundleError(f"--fedge-wheel {given}: not a fedge-*.whl file")
        return given
    if not (SOURCE_TREE / "pyproject.toml").is_file():
        raise BundleError("fedge runs from an installed package, not a source tree: "
                          "pass --fedge-wheel FILE (pip wheel --no-deps PATH/TO/fedge)")
    _pip("wheel", "--no-deps", "-q", "-w", str(dest), str(SOURCE_TREE),
         what="building fedge's wheel")
    return next(dest.glob("fedge-*.whl"))


def requirements(wheel: Path, extras: tuple[str, ...] = ()) -> list[str]:
    """fedge's own dependencies and those of `extras`, from its wheel's Requires-Dist,
    markers removed from the extras' (fedge[...] self-references are left out)."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(name).decode()
    found = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.split(":", 1)[1].strip()
        extra = re.search(r"""extra == ["']([^"']+)["']""", requirement)
        if extra is None:
            found.append(requirement)
        elif extra.group(1) in extras and not requirement.startswith("fedge"):
            found.append(requirement.split(";", 1)[0].strip())
    return found


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else requirement


def download(target: Target, python: str, wanted: list[str], dest: Path) -> None:
    """Wheels of `wanted` and what they need, for `target` running CPython `python`.

    Targets with Debian-provided packages get pure-Python wheels only, without
    dependencies (what they need comes from Debian)."""
    version = python.replace(".", "")
    args = ["download", "-q", "--only-binary=:all:", "-d", str(dest),
            "--python-version", python, "--implementation", "cp",
            "--abi", f"cp{version}", "--abi", "abi3", "--abi", "none"]
    for platform in target.platforms():
        args += ["--platform", platform]
    if target.wheel_arch is None:
        args.append("--no-deps")
    _pip(*args, *wanted, what=f"downloading wheels for {target.arch}")


def _pip(*args: str, what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith("error:")]
        reason = (errors or lines or [f"pip exited {done.returncode}"])[0]
        raise PipFailed(f"{what} failed: {reason[6:].strip() if errors else reason}")
