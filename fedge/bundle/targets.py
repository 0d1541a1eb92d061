"""The machines a bundle can be built for, and how each one gets its dependencies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One Debian architecture: where its dependencies come from.

    `wheel_arch` targets take every dependency as a wheel for that machine. The others
    (armhf: the index has no armv7l wheels of numpy, msgpack or cffi) take the packages in
    `debian_packages` from Debian and only pure-Python wheels from pip, in a venv that sees
    the system's site-packages.
    """

    arch: str  # Debian's name, as `dpkg --print-architecture` prints it
    wheel_arch: str | None  # the platform tag's machine part; None: pure-Python wheels only
    debian_packages: tuple[str, ...] = ()  # Debian's builds of fedge's compiled dependencies
    # pip's requirement names the Debian packages above provide (skipped by pip download)
    from_debian: tuple[str, ...] = ()

    @property
    def system_site_packages(self) -> bool:
        return bool(self.debian_packages)

    def platforms(self, glibc_minor: int = 36) -> list[str]:
        """pip --platform tags a Debian bookworm system (glibc 2.36) can load."""
        if self.wheel_arch is None:
            return ["any"]
        tags = [f"manylinux_2_{minor}_{self.wheel_arch}" for minor in range(17, glibc_minor + 1)]
        return ["manylinux2014_" + self.wheel_arch, *tags]


TARGETS: dict[str, Target] = {
    "arm64": Target("arm64", "aarch64"),
    "armhf": Target(
        "armhf", None,
        debian_packages=("python3-numpy", "python3-msgpack", "python3-cryptography"),
        from_debian=("numpy", "msgpack", "cryptography")),
    # A Debian/Ubuntu x86-64 box, e.g. a gateway-side device; also what the tests build.
    "amd64": Target("amd64", "x86_64"),
}
