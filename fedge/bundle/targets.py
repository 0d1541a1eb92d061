"""The machines a bundle can be built for, and how each one gets its dependencies."""

from __future__ import annotations

from dataclasses import dataclass

# fedge's extras that matter on a device (`--extra`); the others are gateway-side.
DEVICE_EXTRAS = ("secagg", "onnx", "litert")


@dataclass(frozen=True)
class Target:
    """One Debian architecture: where its dependencies come from.

    `wheel_arch` targets take every dependency as a wheel for that machine. The others
    (armhf: the index has no armv7l wheels of numpy, msgpack or cffi) take the compiled
    ones from Debian (`debian`: pip's name, Debian's package) and only pure-Python wheels
    from pip, in a venv that sees the system's site-packages.
    """

    arch: str  # Debian's name, as `dpkg --print-architecture` prints it
    wheel_arch: str | None  # the platform tag's machine part; None: pure-Python wheels only
    debian: tuple[tuple[str, str], ...] = ()
    missing_extras: tuple[str, ...] = ()  # extras with no build for this arch at all

    @property
    def system_site_packages(self) -> bool:
        return bool(self.debian)

    def debian_package(self, requirement_name: str) -> str | None:
        return dict(self.debian).get(requirement_name)

    def platforms(self, glibc_minor: int = 36) -> list[str]:
        """pip --platform tags a Debian bookworm system (glibc 2.36) can load."""
        if self.wheel_arch is None:
            return ["any"]
        tags = [f"manylinux_2_{minor}_{self.wheel_arch}" for minor in range(17, glibc_minor + 1)]
        return ["manylinux2014_" + self.wheel_arch, *tags]


TARGETS: dict[str, Target] = {
    "arm64": Target("arm64", "aarch64"),
    # Debian's pycryptodome installs as `Cryptodome` (fedge imports either). onnxruntime
    # and LiteRT have no armv7l builds: armhf serves with runtime="numpy" only.
    "armhf": Target(
        "armhf", None,
        debian=(("numpy", "python3-numpy"), ("msgpack", "python3-msgpack"),
                ("cryptography", "python3-cryptography"),
                ("pycryptodome", "python3-pycryptodome")),
        missing_extras=("onnx", "litert")),
    # A Debian/Ubuntu x86-64 box, e.g. a gateway-side device; also what the tests build.
    "amd64": Target("amd64", "x86_64"),
}
