"""The C reference of the MCU end, and a way to build its host programs with gcc.

fedge_link.h / fedge_link.c: the library (C99, no malloc) that firmware compiles in.
link_vectors.c: runs the shared vectors through it. mcu_sim.c: plays an MCU on a
serial port or pty (POSIX). The tests build both with `build_program`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

FIRMWARE_DIR = Path(__file__).parent
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2")
PROGRAMS = {
    "link_vectors": ("link_vectors.c", "fedge_link.c"),
    "mcu_sim": ("mcu_sim.c", "fedge_link.c"),
}


def find_compiler() -> str | None:
    """$CC if set, else gcc, as a path; None when there is none."""
    return shutil.which(os.environ.get("CC", "gcc"))


def build_program(name: str, out_dir: Path, defines: dict[str, str] | None = None) -> Path:
    """Compile one host program with the strict flags; RuntimeError shows the compiler's
    complaint (warnings are errors)."""
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler: apt-get install gcc (or set CC)")
    if name not in PROGRAMS:
        raise ValueError(f"unknown program {name!r}; known: {', '.join(PROGRAMS)}")
    out = Path(out_dir) / name
    flags = [f"-D{k}={v}" for k, v in (defines or {}).items()]
    sources = [str(FIRMWARE_DIR / s) for s in PROGRAMS[name]]
    done = subprocess.run([compiler, *CFLAGS, *flags, "-o", str(out), *sources],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{compiler} failed on {name}:\n{done.stderr}")
    return out
