"""Running one role from its TOML config: `fedge aggregator` and `fedge device`.

This module composes the device SDK and the aggregator (it builds the initial model
with the numpy trainer), so it lives in `fedge`, not in `aggregator`. The aggregator's
modules are imported by the functions that build one, so `fedge device` never loads them.
"""

from __future__ import annotations

import logging
import signal
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_client.client import ClientConfig, EdgeClient
from edge_client.local_data import checked_local_data
from edge_client.shared.settings import ConfigError, from_table, read_toml
from edge_client.training import NumpyTrainer, build_model

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig
    from aggregator.service import Aggregator, Evaluate
    from edge_client.serve_folder import FolderServer

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """The [model] table: which model to start from (edge_client/training/arch.py).

    kind "mlp" reads `sizes`; kind "sequential" reads `input_shape` and `layers`;
    `qat = true` trains either one for int8.
    """

    kind: str = "mlp"
    sizes: list = field(default_factory=lambda: [64, 1333, 10])
    input_shape: list = field(default_factory=list)
    layers: list = field(default_factory=list)
    qat: bool = False
    seed: int = 0

    def arch(self) -> dict[str, Any]:
        """The arch stored with the model; a float MLP's is exactly what it always was."""
        if self.kind == "mlp":
            if self.input_shape or self.layers:
                raise ConfigError("[model] input_shape and layers are for kind = 'sequential'")
            if len(self.sizes) < 2 or not all(isinstance(s, int) and s > 0 for s in self.sizes):
                raise ConfigError("[model] sizes must be two or more positive integers")
            arch: dict[str, Any] = {"kind": "mlp", "sizes": list(self.sizes)}
        elif self.kind == "sequential":
            arch = {"kind": "sequential", "input_shape": list(self.input_shape),
                    "layers": list(self.layers)}
        else:
            raise ConfigError(f"[model] kind {self.kind!r} is not known; "
                              "use 'mlp' or 'sequential'")
        if self.qat:
            arch["qat"] = True
        return arch

    def trainer(self) -> NumpyTrainer:
        arch = self.arch()
        try:
            return NumpyTrainer(build_model(arch, seed=self.seed))
        except ValueError as exc:  # the message names the key, e.g. layers[2] (dense) units
            raise ConfigError(f"[model] {str(exc).removeprefix('arch ')}") from None


@dataclass
class DataSpec:
    """The device's [data] table: an .npz file with arrays `x` and `y` (read into memory),
    or `x` and `y` as two .npy files, memory-mapped so data larger than memory trains."""

    path: Path | None = None  # "data.npz" when neither path nor x and y is given
    x: Path | None = None
    y: Path | None = None
    # an .npz with x and y, the device's held-out data (edge_client/holdout.py): canary
    # evaluations and personal/global accuracy are measured on it; unset: a fifth of x, y
    holdout: Path | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if self.x is None and self.y is None:
            return load_npz(self.path or Path("data.npz"))
        if self.path is not None:
            raise ConfigError("[data]: give path (an .npz) or x and y (two .npy files), "
                              "not both")
        if self.x is None or self.y is None:
            raise ConfigError("[data] x and y name two .npy files: give both")
        return load_npy(self.x, self.y)

    @property
    def where(self) -> str:
        return f"[data] {self.x or self.path or 'data.npz'}"


def _split_tables(table: dict[str, Any], *names: str) -> list[dict[str, Any]]:
    return [table.pop(name, {}) for name in names]


@dataclass
class EvaluationSpec:
    """The aggregator's [evaluation] table: an optional held-out set on the gateway."""

    data: Path | None = None  # an .npz with arrays x and y; each new version is scored on it


def load_aggregator_file(path: Path) -> tuple[AggregatorConfig, ModelSpec]:
    config, spec, _ = _aggregator_tables(path)
    return config, spec


def _aggregator_tables(path: Path) -> tuple[AggregatorConfig, ModelSpec, EvaluationSpec]:
    from aggregator.config import load_aggregator_config

    table = read_toml(path)
    model_table, evaluation_table = _split_tables(table, "model", "evaluation")
    return (load_aggregator_config(table, str(path), also_known=("evaluation", "model")),
            from_table(ModelSpec, model_table, "[model]"),
            from_table(EvaluationSpec, evaluation_table, "[evaluation]"))


def held_out_evaluator(spec: ModelSpec, evaluation: EvaluationSpec) -> Evaluate | None:
    """Accuracy and loss of each new version on the gateway's held-out set, if it has one."""
    if evaluation.data is None:
        return None
    x, y = load_npz(evaluation.data)
    scorer = spec.trainer()

    def evaluate(weights: dict[str, np.ndarray]) -> dict[str, float]:
        scorer.set_weights(weights)
        return scorer.evaluate(x, y)
    return evaluate


def build_aggregator(path: Path) -> Aggregator:
    from aggregator.service import Aggregator

    config, spec, evaluation = _aggregator_tables(path)
    arch = spec.arch()
    aggregator = Aggregator(config, initial_weights=spec.trainer().get_weights(), arch=arch,
                            evaluate=held_out_evaluator(spec, evaluation))
    if aggregator.arch != arch:
        log.warning("aggregator: [model] in %s is %s, but the store continues from %s; "
                    "the stored model wins (start a new db_path for a new model)",
                    path, arch, aggregator.arch)
    return aggregator


@dataclass
class DeviceRun:
    """What `fedge device` runs: the client and, with [serve] watch, its folder server."""

    client: EdgeClient
    folder: FolderServer | None = None

    def run(self, stop: threading.Event) -> None:
        if self.folder is None:
            self.client.run(stop)
            return
        serving = threading.Thread(target=self.folder.run, args=(stop,), name="serve-folder",
                                   daemon=True)
        serving.start()
        try:
            self.client.run(stop)
        finally:
            stop.set()  # the client is done (or failed): so is the folder
            serving.join(10)


def build_device(path: Path) -> EdgeClient:
    return build_device_run(path).client


def build_device_run(path: Path) -> DeviceRun:
    table = read_toml(path)
    model_table, data_table = _split_tables(table, "model", "data")
    config = from_table(ClientConfig, table, str(path), also_known=("data", "model"))
    spec = from_table(ModelSpec, model_table, "[model]")
    data = from_table(DataSpec, data_table, "[data]")
    x, y = data.load()
    trainer = spec.trainer()
    check_data_fits(trainer, x, y, data.where)
    holdout = None
    if data.holdout is not None:  # edge_client/holdout.py
        holdout = load_npz(data.holdout)
        check_data_fits(trainer, *holdout, f"[data] holdout {data.holdout}")
    if not config.serve.enabled:
        return DeviceRun(EdgeClient(config, trainer, x, y, holdout=holdout))
    return served_device(config, trainer, x, y, holdout, spec.arch(), path)


# the package each optional [serve] runtime imports, and how to install it
RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "pip install 'fedge[onnx]'"),
                    "litert": ("ai_edge_litert", "pip install 'fedge[litert]'"),
                    "tflite-runtime": ("tflite_runtime", "pip install tflite-runtime (numpy < 2)")}


def check_runtime_installed(runtime: str, where: Path) -> None:
    """A missing runtime is a config error at start, not a failed load at the first model
    (found without importing it: the device loads it only with the first model)."""
    import importlib.util

    if runtime not in RUNTIME_PACKAGES:
        return
    package, how = RUNTIME_PACKAGES[runtime]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{where} [serve] runtime {runtime!r} needs {package}: {how}")


def served_device(config: ClientConfig, trainer: NumpyTrainer, x: np.ndarray, y: np.ndarray,
                  holdout: tuple[np.ndarray, np.ndarray] | None,
                  arch: dict[str, Any], config_path: Path) -> DeviceRun:
    """[serve]: a Predictor serves each production model and watches the inputs for drift
    against the training inputs; the predictor (and its runtime) is imported only here."""
    from edge_client.predictor import Predictor
    from edge_client.serve_folder import FolderServer, logged_load

    serve = config.serve
    check_runtime_installed(serve.runtime, config_path)
    # an int8 float model is calibrated on the device after training: on its own inputs
    calibration = x[:256] if serve.int8 and not arch.get("qat") else None
    predictor = Predictor(serve.runtime, serve.int8, calibration=calibration)
    client = EdgeClient(config, trainer, x, y, holdout=holdout, predictor=predictor,
                        on_model=logged_load(predictor))
    log.info("%s: [serve] serves each production model with the %s runtime%s%s",
             config.device_id, serve.runtime, " (int8)" if serve.int8 else "",
             f"; batches from {serve.watch}" if serve.watch else "; no watch folder")
    folder = None if serve.watch is None else FolderServer(serve.watch, predictor, serve.poll_s)
    return DeviceRun(client, folder)


def check_data_fits(trainer: NumpyTrainer, x: np.ndarray, y: np.ndarray, where: str) -> None:
    """Data that does not fit the [model] is a config error at start, not a traceback that
    ends the device's loop at its first task."""
    if x.ndim < 2 or len(x) == 0 or y.shape != (len(x),):
        raise ConfigError(f"{where}: need x of shape (samples, ...) and y of shape (samples,), "
                          f"at least one sample; got x {x.shape}, y {y.shape}")
    trainer.model.set_training(False)
    try:
        classes = trainer.model.output_shape(x[:1])[1]
    except ValueError as exc:
        raise ConfigError(f"{where}: x of shape {x.shape} does not fit [model]: {exc}") from None
    if y.min() < 0 or y.max() >= classes:
        raise ConfigError(f"{where}: labels y must be 0 to {classes - 1} for this [model], got "
                          f"{y.min()} to {y.max()}")


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Local data as arrays x (samples, features) and y (labels); never unpickles."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise ConfigError(f"[data] {path}: not an .npz archive (write one with "
                          f"numpy.savez(path, x=..., y=...))")
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"[data] {path}: need an .npz with arrays x and y ({exc})") from None
    try:
        return checked_local_data(x, y, negative_labels_ok=True)  # check_data_fits
    except ValueError as exc:
        raise ConfigError(f"[data] {path}: {exc}") from None


def load_npy(x_path: Path, y_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels memory-mapped read-only from two .npy files: only the rows a
    batch reads are loaded, and the kernel may drop them again when memory is short."""
    arrays = []
    for key, path in (("x", x_path), ("y", y_path)):
        try:
            loaded = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[data] {key} {path}: need an .npy file as numpy.save writes "
                              f"({exc})") from None
        if not isinstance(loaded, np.ndarray):  # an .npz archive
            loaded.close()
            raise ConfigError(f"[data] {key} {path}: need an .npy file, not an .npz archive "
                              "(an .npz goes in [data] path)")
        arrays.append(loaded)
    try:
        return checked_local_data(arrays[0], arrays[1], negative_labels_ok=True)
    except ValueError as exc:
        raise ConfigError(f"[data] {x_path}, {y_path}: {exc}") from None


def run_until_signal(run: Any) -> None:
    """Run a role's loop until it finishes or SIGINT/SIGTERM asks it to stop."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run(stop)
