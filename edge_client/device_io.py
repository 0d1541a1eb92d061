"""The device shell's hands on this machine: the trainer, the outbox and the state files.

EdgeClient hands it the session actions that touch them and feeds back what it returns
(edge_client.session.actions lists which actions want an answer). Nothing here decides
anything: failures become answers (ModelRefused, UpdateNotStored) or log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from edge_client.client_config import ClientConfig
from edge_client.device_state import DeviceState
from edge_client.narration import DeviceNarrator
from edge_client.outbox import Outbox, OutboxFull
from edge_client.personal import LocalModels
from edge_client.personal.holdout import split_holdout
from edge_client.personal.saved import load_local, save_local
from edge_client.session import actions as act
from edge_client.session.events import (
    Event,
    FitFinished,
    ModelInstalled,
    ModelRefused,
    Resumed,
    UpdateNotStored,
    UpdateStored,
)
from edge_client.session.held_model import HeldModel, copy_weights
from edge_client.shared.clusters import cluster_count
from edge_client.shared.protocol import Task
from edge_client.shared.protocol.tensors import Weights
from edge_client.shared.train_config import TrainConfig
from edge_client.training.trainer import Trainer

log = logging.getLogger("edge_client.client")  # one logger for all the device says
LocalData = Callable[[], tuple[np.ndarray, np.ndarray]]



class TrainerFailed(RuntimeError):
    """The app's trainer raised. Not a message's fault, so unlike a bad message it ends
    the device loop (`EdgeClient.run` raises it; `fedge device` says it in one line)."""

class DeviceIO:
    def __init__(self, config: ClientConfig, trainer: Trainer, narrator: DeviceNarrator,
                 on_model: Callable[[int, dict, Weights], None] | None,
                 holdout: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.config = config
        self.trainer = trainer
        self.narrator = narrator
        self.on_model = on_model
        self.disk = DeviceState(config.state_dir, config.device_id, config.max_model_elements)
        self.outbox = Outbox(config.state_dir / "outbox", config.outbox_max)
        self.holdout = holdout  # the app's held-out data, if it gave one
        self.data: LocalData | None = None  # set by the shell: the cluster choice reads it
        # personalised or clustered: what a previous run kept, else made on first use
        self.local: LocalModels | None = load_local(config.state_dir, config.device_id,
                                                    config.max_model_elements)
        self._arch: dict = {}

    def execute(self, action: act.Action, data: LocalData,
                should_stop: Callable[[], bool], stopping: Callable[[], bool]) -> Event | None:
        """Carry out one action on this machine; the answer to feed back, if it has one."""
        match action:
            case act.InstallModel(version, tensors, arch):
                try:
                    self.install(version, tensors, arch)
                except ValueError as exc:
                    return ModelRefused(version, str(exc))
                return ModelInstalled(version)
            case act.StartFit(task, weights, config) if _own_models(task, weights):
                return self._local_fit(task, weights, config, data(), should_stop, stopping)
            case act.StartFit(task, weights, config):
                if self.local is not None:  # personalisation was turned off: serve global
                    self.local.read_task(task)
                x, y = data()  # one consistent pair, even if set_data runs meanwhile
                self.narrator.training(task, len(x))
                try:
                    self.trainer.set_weights(weights)
                    before = self.trainer.evaluate(x, y)
                    result = self.trainer.fit(x, y, config, should_stop=should_stop)
                    after = self.trainer.get_weights()
                except Exception as exc:
                    raise TrainerFailed(f"the trainer failed on task {task.task_id}: "
                                        f"{type(exc).__name__}: {exc}") from exc
                return FitFinished(task.task_id, result, after, before, len(x),
                                   shutting_down=stopping())
            case act.StoreUpdate(nonce, payload):
                return self._store(nonce, payload)
            case act.RemoveUpdate(nonce):
                self.outbox.remove(nonce)
            case act.SetAsideUpdate(nonce, why):
                self.outbox.set_aside(nonce, why)
            case act.SaveModel(version, blob):
                self._persist(f"model version {version}",
                              lambda: self.disk.save_model(blob, version))
            case act.SaveTasks(done, held_version):
                self._persist("task list",
                              lambda: self.disk.save_done_tasks(list(done), held_version))
            case act.SaveResidual(feedback, base_version):
                self._persist("error-feedback residual",
                              lambda: self.disk.save_residual(feedback, base_version))
        return None

    def install(self, version: int, tensors: Weights, arch: dict) -> None:
        """Load a global model into the trainer (ValueError: names or shapes differ) and
        hand it to the app's on_model (a clustered model: the cluster that fits the
        local data best; a personalised federation: the device's own model)."""
        self._arch = arch
        if self.local is None and cluster_count(tensors):
            self.local = LocalModels(self.config.device_id)
        if self.local is not None:
            data = self.data() if self.data is not None else None
            tensors = self.local.serving(tensors, self.trainer, data)
        self.trainer.set_weights(copy_weights(tensors))
        self._serve(version, tensors)

    def _serve(self, version: int, tensors: Weights) -> None:
        if self.on_model is not None:
            try:
                self.on_model(version, self._arch, copy_weights(tensors))
            except Exception:  # the app's serving must never stop the device loop
                log.exception("%s: on_model failed for version %d", self.config.device_id,
                              version)

    def _local_fit(self, task: Task, weights: Weights, config: TrainConfig,
                   data: tuple[np.ndarray, np.ndarray], should_stop: Callable[[], bool],
                   stopping: Callable[[], bool]) -> FitFinished:
        """A fit with the device's own models (edge_client/personal/): trained on the
        data the held-out part leaves, measured on that part; then served."""
        local = self.local = self.local or LocalModels(self.config.device_id)
        train, held = ((data, self.holdout) if self.holdout is not None
                       else split_holdout(data, self.config.device_id))
        self.narrator.training(task, len(train[0]))
        try:
            fit = local.fit(self.trainer, task, weights, config, train, held, should_stop)
        except Exception as exc:
            raise TrainerFailed(f"the trainer failed on task {task.task_id}: "
                                f"{type(exc).__name__}: {exc}") from exc
        if fit.serve is not None:
            self._serve(task.model_version, fit.serve)
        self._persist("personal model", lambda: save_local(self.config.state_dir, local))
        return FitFinished(task.task_id, fit.result, fit.weights, fit.before, len(train[0]),
                           shutting_down=stopping(), metrics=fit.metrics, only=fit.only)

    def resumed(self) -> Resumed:
        """What survived a reboot: tasks done, the last model (installed now), the outbox."""
        done = tuple(self.disk.load_done_tasks())
        model, held, residual = self.disk.load_model(), None, None
        if model is not None:
            try:
                self.install(model.version, model.tensors, model.arch)
            except ValueError as exc:
                log.error("%s: stored model does not fit the trainer (%s); will fetch it "
                          "again", self.config.device_id, exc)
            else:
                held = HeldModel(model.version, copy_weights(model.tensors), model.arch,
                                 self.disk.model_sha256())
                residual = self.disk.load_residual(sum(w.size for w in model.tensors.values()))
        return Resumed(done, held, residual, tuple(self.outbox.entries()))

    def _store(self, nonce: str, payload: bytes) -> Event:
        try:
            self.outbox.put(nonce, payload)
        except OutboxFull as exc:
            return UpdateNotStored(nonce, str(exc), full=True)
        except OSError as exc:
            return UpdateNotStored(nonce, f"could not write the update to the outbox in "
                                          f"{self.outbox.folder} ({exc.strerror or exc})")
        return UpdateStored(nonce)

    def _persist(self, what: str, write: Callable[[], None]) -> None:
        """Write state that helps after a reboot but loses no update when it fails (the
        outbox is written first): a full or read-only disk is logged, not fatal."""
        try:
            write()
        except OSError as exc:
            log.error("%s: could not save the %s in %s (%s); carrying on, will save it "
                      "again next time", self.config.device_id, what, self.config.state_dir,
                      exc.strerror or exc)


def _own_models(task: Task, weights: Weights) -> bool:
    """A task that personalises, or a clustered model: the device's own models train."""
    return task.personal is not None or bool(cluster_count(weights))
