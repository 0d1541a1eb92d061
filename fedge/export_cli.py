"""`fedge export`: a global model from the aggregator's store as ONNX, .tflite or a C header.

    fedge export --db aggregator.sqlite3 --format onnx --out model.onnx
    fedge export --config aggregator.toml --format tflite --int8 --out model.tflite
    fedge export --db aggregator.sqlite3 --format c-header --calibration calib.npz \\
        --out model_data.h

The store is opened read-only, so exporting beside a running aggregator is safe. int8
of a QAT model uses the ranges it was trained with; a float model needs --calibration
(an .npz with an array `x` of typical inputs) for post-training quantization.
`c-header` is always the int8 .tflite, for TFLite Micro.

Exit codes: 0 when written, 2 for a user error (no such store or version, a model that
cannot be exported as asked), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.shared.clusters import cluster_count, unstack
from edge_client.shared.protocol import Model, RemoteProtocolError, decode
from edge_client.shared.settings import ConfigError
from edge_client.shared.weights import Weights

FORMATS = ("onnx", "tflite", "c-header")


@dataclass(frozen=True)
class StoredGlobalModel:
    version: int
    arch: dict[str, Any]
    weights: Weights


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Add `export` to the `fedge` command's subparsers."""
    p = sub.add_parser("export", help="write a stored global model as ONNX, .tflite or C",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", type=Path, help="the aggregator's SQLite store")
    where.add_argument("--config", type=Path, help="the aggregator's TOML (for its db_path)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--int8", action="store_true",
                   help="full-integer int8 (QDQ for ONNX); implied by c-header")
    p.add_argument("--version", type=int, help="model version (default: the latest)")
    p.add_argument("--cluster", type=int,
                   help="a clustered federation's model ([clusters] k > 1): which cluster")
    p.add_argument("--calibration", type=Path,
                   help=".npz with an array x: quantizes a float (non-QAT) model for --int8")
    p.add_argument("--name", help="c-header: the C array's name (default: from --out)")
    p.add_argument("--out", required=True, type=Path, help="the file to write")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        summary = export(args)
    except (ConfigError, ValueError, OSError, ImportError, sqlite3.Error,
            RemoteProtocolError) as exc:
        print(f"fedge export: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def export(args: argparse.Namespace) -> str:
    """Do the export `args` ask for; returns the one-line summary printed."""
    from edge_client.export import to_c_header, to_onnx, to_tflite

    db_path = args.db if args.db is not None else _db_from_config(args.config)
    model = one_cluster(read_model(db_path, args.version), args.cluster)
    int8 = args.int8 or args.format == "c-header"
    arch, weights, how = model.arch, model.weights, ""
    if int8:
        arch, weights, how = _int8_ready(model, args.calibration)
    if args.format == "onnx":
        data = to_onnx(arch, weights, int8=int8)
    else:
        data = to_tflite(arch, weights, int8=int8)
    if args.format == "c-header":
        data = to_c_header(data, args.name or c_name(args.out)).encode()
    _write_atomically(args.out, data)
    kind = f"{args.format} {'int8' if int8 else 'float32'}{how}"
    return f"wrote {args.out}: {kind}, model version {model.version}, {len(data)} bytes"


def read_model(db_path: Path, version: int | None = None) -> StoredGlobalModel:
    """One stored model (the latest by default), through a read-only connection."""
    if not Path(db_path).is_file():
        raise ValueError(f"{db_path}: no such aggregator store")
    if version is not None and not 0 <= version < 2**63:  # beyond SQLite's INTEGER
        raise ValueError(f"{db_path}: no model version {version}")
    db = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        if version is None:
            row = db.execute("SELECT version, blob FROM models ORDER BY version DESC "
                             "LIMIT 1").fetchone()
        else:
            row = db.execute("SELECT version, blob FROM models WHERE version=?",
                             (version,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{db_path}: not an aggregator store ({exc})") from None
    finally:
        db.close()
    if row is None:
        which = "no models" if version is None else f"no model version {version}"
        raise ValueError(f"{db_path}: {which}")
    message = decode(row[1], expect=Model)
    if not message.arch:
        raise ValueError(f"model version {row[0]} was stored without its arch")
    weights = {k: np.asarray(v, np.float32) for k, v in message.tensors.items()}
    return StoredGlobalModel(int(row[0]), dict(message.arch), weights)


def one_cluster(model: StoredGlobalModel, cluster: int | None) -> StoredGlobalModel:
    """A clustered model's cluster `cluster` (docs/heterogeneity.md#clusters); a plain
    model as it is. ValueError: a clustered model without a valid --cluster, or
    --cluster for a plain one."""
    k = cluster_count(model.weights)
    if k == 0 and cluster is None:
        return model
    if k == 0:
        raise ValueError(f"model version {model.version} is not clustered: leave out "
                         f"--cluster")
    if cluster is None or not 0 <= cluster < k:
        raise ValueError(f"model version {model.version} holds {k} cluster models: "
                         f"choose one with --cluster 0 to {k - 1}")
    return dataclasses.replace(model, weights=unstack(model.weights)[cluster])


def c_name(path: Path) -> str:
    """A C identifier from a file name: model_data.h -> model_data, 2-b.h -> m_2_b,
    int.h -> m_int (a keyword)."""
    from edge_client.export.c_header import is_c_name

    name = re.sub(r"\W", "_", path.name.split(".")[0], flags=re.ASCII) or "model"
    return name if is_c_name(name) else f"m_{name}"


def _int8_ready(model: StoredGlobalModel, calibration: Path | None) -> tuple[dict, Weights, str]:
    """(arch, weights with activation ranges, how they were quantized)."""
    if model.arch.get("qat"):
        if calibration is not None:
            print("fedge export: the model was trained with qat and carries its own ranges; "
                  "--calibration is not used", file=sys.stderr)
        return model.arch, model.weights, " (ranges from qat)"
    if calibration is None:
        raise ValueError(f"model version {model.version} is a float model (no qat): int8 "
                         "needs --calibration data.npz, an array x of typical inputs, for "
                         "post-training quantization")
    from edge_client.training.quantize import calibrate

    x = _calibration_inputs(calibration)
    arch, weights = calibrate(model.arch, model.weights, x)
    return arch, weights, f" (calibrated on {len(x)} samples)"


def _calibration_inputs(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("this is a single .npy array, not an .npz archive")
        with loaded as npz:
            x = np.asarray(npz["x"], np.float32)
    except Exception as exc:  # a damaged file raises BadZipFile, zlib.error, EOFError, ...
        raise ValueError(f"--calibration {path}: need an .npz with an array x "
                         f"({type(exc).__name__}: {exc})") from None
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"--calibration {path}: x must hold samples, got shape {x.shape}")
    return x


def _db_from_config(config: Path) -> Path:
    from fedge.roles import load_aggregator_file

    return load_aggregator_file(config)[0].db_path


def _write_atomically(out: Path, data: bytes) -> None:
    """A reader of `out` sees the old file or the whole new one, never half of it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except BaseException:  # a full disk, --out a folder: leave no half-written temp file
        tmp.unlink(missing_ok=True)
        raise
