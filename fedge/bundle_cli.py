"""`fedge bundle`: one offline artefact (tar.gz) to flash onto a device.

Exit codes: 0 when written, 2 for input it cannot use (the message names the flag or
file), 1 when pip could not build or download what the bundle needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedge.bundle.targets import DEVICE_EXTRAS, TARGETS


def add_bundle_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `bundle` to the `fedge` command's subparsers."""
    p = subparsers.add_parser(
        "bundle", help="build an offline install bundle for a device (tar.gz)",
        description="Build one tar.gz with everything a device needs to install with no "
                    "network: wheels for the target, fedge, the app, its config, the device "
                    "key, a systemd unit and install.sh. See docs/raspberry-pi.md.")
    p.add_argument("--arch", required=True, choices=tuple(TARGETS),
                   help="the device's Debian architecture: arm64 (64-bit Pi OS), armhf "
                        "(32-bit Pi OS: Debian's numpy, msgpack, cryptography), amd64")
    p.add_argument("--app", required=True, type=Path,
                   help="the app's folder (data, code); installed as /opt/fedge/app")
    p.add_argument("--config", required=True, type=Path,
                   help="the device's TOML file; installed as /etc/fedge/device.toml")
    p.add_argument("--out", required=True, type=Path, help="the .tar.gz to write")
    p.add_argument("--key", type=Path,
                   help="ship this device key (PEM, mode 600) at [security] key_file; "
                        "default: a new key when the config has key_file")
    p.add_argument("--extra", action="append", default=[], choices=DEVICE_EXTRAS,
                   help="add one of fedge's device extras: secagg (pycryptodome; armhf: "
                        "Debian's), onnx, litert (arm64, amd64 only); repeat for more")
    p.add_argument("--debs", type=Path,
                   help="armhf: a folder of .deb files (Debian's numpy, msgpack, "
                        "cryptography and what they need) to ship and install first")
    p.add_argument("--fedge-wheel", type=Path,
                   help="fedge's wheel to ship; default: built from this source tree")
    p.add_argument("--python", default="3.11",
                   help="the device's python3 version, X.Y (default 3.11: Debian bookworm)")
    p.set_defaults(func=_bundle)


def _bundle(args: argparse.Namespace) -> int:
    from fedge.bundle.builder import BundleRequest, build
    from fedge.bundle.inputs import BundleError, PipFailed

    request = BundleRequest(arch=args.arch, app=args.app, config=args.config, out=args.out,
                            key=args.key, fedge_wheel=args.fedge_wheel, debs=args.debs,
                            python=args.python, extras=tuple(args.extra))
    try:
        manifest = build(request)
    except BundleError as exc:
        print(f"fedge bundle: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, PipFailed) else 2
    except OSError as exc:
        print(f"fedge bundle: {exc.filename or args.out}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    size_mib = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mib:.1f} MiB): {manifest.device_id} for {manifest.arch}, "
          f"{len(manifest.wheels)} wheels, {manifest.app_files} app files")
    if manifest.debian_packages and not manifest.debs:
        print(f"the device needs these Debian packages installed first: "
              f"{' '.join(manifest.debian_packages)} (or rebuild with --debs)")
    for named in manifest.not_in_bundle:
        print(f"not in the bundle: the device.toml names {named}; put it on the device "
              f"yourself, or in --app and under /opt/fedge/app")
    if manifest.key_public:
        print(f"device key at {manifest.key} on the device; enroll it at the gateway:\n"
              f"  fedge aggregator enroll --config aggregator.toml --device "
              f"{manifest.device_id} --key '{manifest.key_public}'")
    else:
        print("no device key: the config has no [security] key_file (updates are unsigned)")
    print("on the device: tar xzf FILE && sudo ./fedge-bundle-*/install.sh")
    return 0
