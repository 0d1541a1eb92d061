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
from edge_client.holdout import held_out, split_holdout
from edge_client.narration import DeviceNarrator
from edge_client.outbox import Outbox, OutboxFull
from edge_client.personal import LocalModels
from edge_client.personal.saved import load_local, save_local
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
        self._installed: tuple[int, Weights] | None = None  # install's own variant
        self._served: tuple[int, dict, Weights] | None = None  # the global version served
        self.following: int | None = None  # production, once a Rollout named one

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
                self.following = production
                self._persist("rollout state", lambda: self.disk.save_rollout(production))
        return None

    def serve(self, version: int, arch: dict, tensors: Weights) -> None:
        """Hand a version to the app's on_model (its Predictor): it serves it from now on;
        personalised or clustered, the device's own variant of it."""
        self._served = (version, arch, tensors)
        self._hand(version, arch, self._own(version, tensors))

    def _hand(self, version: int, arch: dict, tensors: Weights) -> None:
        if self.on_model is None:
            return
        try:
            self.on_model(version, arch, copy_weights(tensors))
        except Exception as exc:  # the app's serving must never stop the device loop
            log.error("%s: serving version %d failed, the model served before stays: %s: "
                      "%s", self.config.device_id, version, type(exc).__name__, exc)
            log.debug("%s: on_model's traceback", self.config.device_id, exc_info=True)

    def held_out(self, data: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The held-out data models are measured on (edge_client/holdout.py)."""
        return held_out(data, self.config.device_id, self.holdout)

    def evaluate_canary(self, action: act.EvaluateCanary,
                        holdout: tuple[np.ndarray, np.ndarray]) -> CanaryEvaluated:
        """Both models in the numpy runtime when it can build them (with agreement),
        else through the app's trainer (docs/lifecycle.md)."""
        # Only a device in a staged rollout's canary cohort gets here: the numpy runtime
        # (edge_client/export) is loaded then, not by every device at start.
        from edge_client.canary_eval import RUNNABLE, canary_report, trainer_report

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
        an architecture it cannot adopt); a clustered model: the cluster that fits the
        local data best, a personalised federation: the device's own model. What the app
        serves follows ServeModel (edge_client/session/serving.py, `serve`)."""
        self._arch = arch
        if self.local is None and cluster_count(tensors):
            self.local = LocalModels(self.config.device_id)
        if self.local is not None:
            data = self.data() if self.data is not None else None
            tensors = self.local.serving(tensors, self.trainer, data)
            self._installed = (version, tensors)
        _take(self.trainer, tensors, arch)

    def _own(self, version: int, tensors: Weights) -> Weights:
        """The device's own variant of a global version it serves: the one `install`
        made for it, else made now (the trainer keeps its weights)."""
        if self.local is None:
            return tensors
        if self._installed is not None and self._installed[0] == version:
            return self._installed[1]
        kept = self.trainer.get_weights() if cluster_count(tensors) else None
        data = self.data() if self.data is not None else None
        own = self.local.serving(tensors, self.trainer, data)
        if kept is not None:  # choosing the cluster ran the models through the trainer
            self.trainer.set_weights(kept)
        return own

    def _local_fit(self, task: Task, weights: Weights, config: TrainConfig,
                   data: tuple[np.ndarray, np.ndarray], should_stop: Callable[[], bool],
                   stopping: Callable[[], bool]) -> FitFinished:
        """A fit with the device's own models (edge_client/personal/): trained on the
        data the held-out part leaves, measured on that part; then served."""
        local = self.local = self.local or LocalModels(self.config.device_id)
        train, held = ((data, self.holdout) if self.holdout is not None
                       else split_holdout(data, self.config.device_id))
        self._installed = None  # its own part changes: a served variant is made anew
        self.narrator.training(task, len(train[0]))
        try:
            fit = local.fit(self.trainer, task, weights, config, train, held,
                            _bounded(should_stop, config))
        except Exception as exc:
            raise TrainerFailed(f"the trainer failed on task {task.task_id}: "
                                f"{type(exc).__name__}: {exc}") from exc
        if fit.serve is not None and self.following is None:
            self._hand(task.model_version, self._arch, fit.serve)  # its model, just trained
        elif fit.serve is not None and self._served is not None:
            self.serve(*self._served)  # under a rollout: production's variant, updated
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
        self.following = self.disk.load_rollout()
        return Resumed(done, held, residual, tuple(self.outbox.entries()),
                       following=self.following)

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


def _take(trainer: Trainer, tensors: Weights, arch: dict) -> None:
    """The trainer takes the weights; another architecture (a new model line) only if
    the trainer can adopt it. ValueError says why not, in one line."""
    try:
        trainer.set_weights(copy_weights(tensors))
        return
    except ValueError as exc:
        adopt = getattr(trainer, "adopt", None)
        if adopt is None:
            raise ValueError(f"it does not fit this device's trainer ({exc})") from None
    try:
        adopt(arch, copy_weights(tensors))
    except ValueError as exc:
        raise ValueError(f"this device cannot run its architecture ({exc})") from None


def _own_models(task: Task, weights: Weights) -> bool:
    """A task that personalises, or a clustered model: the device's own models train."""
    return task.personal is not None or bool(cluster_count(weights))


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
