"""The C reference of the MCU end, and a way to build its host programs with gcc.

fedge_link.h / fedge_link.c: the library (C99, no malloc) that firmware compiles in.
link_vectors.c: runs the shared vectors through it. link_fuzz.c: random and mutated
bytes through every parser (built with sanitizers by the tests). mcu_sim.c: plays an MCU
on a serial port or pty (POSIX). The tests build both with `build_program`, and run the
Arduino example itself on the host with `build_sketch` (host_arduino/: Serial on a pty).
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
    "link_fuzz": ("link_fuzz.c", "fedge_link.c"),
    "mcu_sim": ("mcu_sim.c", "fedge_link.c"),
}


def find_compiler() -> str | None:
    """$CC if set, else gcc, as a path; None when there is none."""
    return shutil.which(os.environ.get("CC", "gcc"))


def build_program(name: str, out_dir: Path, defines: dict[str, str] | None = None,
                  extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile one host program with the strict flags (plus `extra_flags`, e.g. the
    sanitizers); RuntimeError shows the compiler's complaint (warnings are errors)."""
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler: apt-get install gcc (or set CC)")
    if name not in PROGRAMS:
        raise ValueError(f"unknown program {name!r}; known: {', '.join(PROGRAMS)}")
    out = Path(out_dir) / name
    flags = [f"-D{k}={v}" for k, v in (defines or {}).items()]
    sources = [str(FIRMWARE_DIR / s) for s in PROGRAMS[name]]
    done = subprocess.run([compiler, *CFLAGS, *extra_flags, *flags, "-o", str(out), *sources],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{compiler} failed on {name}:\n{done.stderr}")
    return out


def find_cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def build_sketch(sketch: Path, out_dir: Path, defines: dict[str, str] | None = None) -> Path:
    """An Arduino sketch (.ino, plain Arduino C++) built for this host against the shim in
    host_arduino/, with fedge_link.c compiled as C as the Arduino IDE does."""
    cc, cxx = find_compiler(), find_cxx()
    if cc is None or cxx is None:
        raise RuntimeError("building a sketch on the host needs gcc and g++")
    out_dir = Path(out_dir)
    link_object = out_dir / "fedge_link.o"
    shim = FIRMWARE_DIR / "host_arduino"
    flags = [f"-D{k}={v}" for k, v in (defines or {}).items()]
    steps = [
        [cc, *CFLAGS, "-c", str(FIRMWARE_DIR / "fedge_link.c"), "-o", str(link_object)],
        [cxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-O2", f"-I{shim}",
         f"-I{Path(sketch).parent}", *flags, "-x", "c++", str(sketch), "-x", "none",
         str(shim / "host_arduino.cpp"), str(link_object), "-o", str(out_dir / Path(sketch).stem)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"{step[0]} failed on {Path(sketch).name}:\n{done.stderr}")
    return out_dir / Path(sketch).stem
