"""The device shell's hands on this machine: the trainer, the outbox and the state files.

EdgeClient hands it the session actions that touch them and feeds back what it returns
(edge_client.session.actions lists which actions want an answer). Nothing here decides
anything: failures become answers (ModelRefused, UpdateNotStored) or log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from edge_client.canary_eval import RUNNABLE, canary_report, trainer_report
from edge_client.client_config import ClientConfig
from edge_client.device_state import DeviceState
from edge_client.narration import DeviceNarrator
from edge_client.outbox import Outbox, OutboxFull
from edge_client.session import actions as act
from edge_client.session.events import (
    CanaryEvaluated,
    Event,
    FitFinished,
    ModelInstalled,
    ModelRefused,
    Resumed,
    UpdateNotStored,
    UpdateStored,
)
from edge_client.session.held_model import HeldModel, copy_weights
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
                 on_model: Callable[[int, dict, Weights], None] | None) -> None:
        self.config = config
        self.trainer = trainer
        self.narrator = narrator
        self.on_model = on_model
        self.disk = DeviceState(config.state_dir, config.device_id, config.max_model_elements)
        self.outbox = Outbox(config.state_dir / "outbox", config.outbox_max)

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
            case act.StartFit(task, weights, config):
                x, y = data()  # one consistent pair, even if set_data runs meanwhile
                self.narrator.training(task, len(x))
                try:
                    self.trainer.set_weights(weights)
                    before = self.trainer.evaluate(x, y)
                    result = self.trainer.fit(x, y, config,
                                              should_stop=_bounded(should_stop, config))
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
            case act.ServeModel(version, arch, tensors):
                self.serve(version, arch, tensors)
            case act.SaveRollout(production):
                self._persist("rollout state", lambda: self.disk.save_rollout(production))
        return None

    def serve(self, version: int, arch: dict, tensors: Weights) -> None:
        """Hand a version to the app's on_model (its Predictor): it serves it from now on."""
        if self.on_model is None:
            return
        try:
            self.on_model(version, arch, copy_weights(tensors))
        except Exception:  # the app's serving must never stop the device loop
            log.exception("%s: on_model failed for version %d", self.config.device_id,
                          version)

    def evaluate_canary(self, action: act.EvaluateCanary,
                        holdout: tuple[np.ndarray, np.ndarray]) -> CanaryEvaluated:
        """Both models in the numpy runtime when it can build them (with agreement),
        else through the app's trainer (docs/lifecycle.md)."""
        me, candidate, production = self.config.device_id, action.candidate, action.production
        try:
            if candidate.arch.get("kind") in RUNNABLE:
                return CanaryEvaluated(canary_report(me, candidate, production, *holdout))
            return CanaryEvaluated(trainer_report(me, self.trainer, candidate, production,
                                                  *holdout))
        except Exception as exc:  # a model neither can run, no data: say why
            return CanaryEvaluated(None, f"canary evaluation failed: {exc}")

    def install(self, version: int, tensors: Weights, arch: dict) -> None:
        """Load a global model into the trainer (ValueError: names or shapes differ, or
        an architecture it cannot adopt). What the app serves follows ServeModel
        (edge_client/session/serving.py)."""
        self._take(tensors, arch)

    def _take(self, tensors: Weights, arch: dict) -> None:
        """The trainer takes the weights; another architecture (a new model line) only if
        the trainer can adopt it. ValueError says why not, in one line."""
        try:
            self.trainer.set_weights(copy_weights(tensors))
            return
        except ValueError as exc:
            adopt = getattr(self.trainer, "adopt", None)
            if adopt is None:
                raise ValueError(f"it does not fit this device's trainer ({exc})") from None
        try:
            adopt(arch, copy_weights(tensors))
        except ValueError as exc:
            raise ValueError(f"this device cannot run its architecture ({exc})") from None

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
        return Resumed(done, held, residual, tuple(self.outbox.entries()),
                       following=self.disk.load_rollout())

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


def _bounded(should_stop: Callable[[], bool], config: TrainConfig) -> Callable[[], bool]:
    """`should_stop`, and with `max_batches` also true once that many batches ran (it is
    asked before every batch)."""
    if not config.max_batches:
        return should_stop
    asked = 0

    def stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > config.max_batches or should_stop()
    return stop
