"""What a device owner tunes (docs/configuration.md): read by the shell and the session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_client.eligibility import EligibilityConfig
from edge_client.shared.protocol.topics import check_name
from edge_client.shared.security import BrokerAuth, DeviceSecurity

# the runtimes edge_client.predictor.Predictor serves with (edge_client.export.runtimes
# RUNTIMES); named here so that reading a config imports no exporter
SERVE_RUNTIMES = ("numpy", "onnxruntime", "litert", "tflite-runtime")


@dataclass
class ServeConfig:
    """The device's [serve] table: serve each production model with a Predictor and
    report input drift against the training inputs (docs/configuration.md, [serve]).

    `watch`: a folder where another process drops .npy batches of inputs; the device
    predicts each and writes the class ids next to it (edge_client/serve_folder.py).
    """

    enabled: bool = False
    runtime: str = "numpy"  # one of SERVE_RUNTIMES
    int8: bool = False  # a float model is calibrated on a sample of the training inputs
    watch: Path | None = None
    poll_s: float = 1.0  # how often the watch folder is listed

    def __post_init__(self) -> None:
        if self.runtime not in SERVE_RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} is not known; use one of "
                             f"{', '.join(SERVE_RUNTIMES)}")
        if not self.poll_s > 0:
            raise ValueError(f"poll_s must be > 0, not {self.poll_s}")
        if self.watch is not None:
            self.watch = Path(self.watch)
            if not self.enabled:
                raise ValueError("watch needs enabled = true")
            if self.watch.exists() and not self.watch.is_dir():
                raise ValueError(f"watch {self.watch} is not a folder")


@dataclass
class ClientConfig:
    """Everything a device owner tunes; see docs/configuration.md."""

    device_id: str
    federation: str = "default"
    host: str = "127.0.0.1"
    port: int = 1883
    state_dir: Path = Path("fedge-state")
    keepalive_s: int = 30
    ack_timeout_s: float = 30.0  # resend an unacknowledged update after this long
    max_model_bytes: int = 64 * 2**20
    max_model_elements: int = 16_000_000
    outbox_max: int = 64
    inbound_queue_bytes: int = 8 * 2**20  # received messages waiting for the loop
    exit_when_done: bool = True  # return from run() when the aggregator says it is done
    eligibility: EligibilityConfig = field(default_factory=EligibilityConfig)
    eligibility_check_s: float = 5.0  # how often to re-check while waiting
    sleep_between_tasks: bool = False  # disconnect until the aggregator's next check-in
    no_task_warning_s: float = 60.0  # connected this long with no task: warn (federation?)
    status_interval_s: float = 120.0  # republish the (retained) status at least this often
    # partial_work tasks: stop training this long before the task's deadline, so that the
    # update (encode, outbox, publish) still arrives in time
    deadline_margin_s: float = 1.0
    security: DeviceSecurity = field(default_factory=DeviceSecurity)
    broker_auth: BrokerAuth = field(default_factory=BrokerAuth)
    serve: ServeConfig = field(default_factory=ServeConfig)  # the CLI device's [serve]

    def __post_init__(self) -> None:
        check_name("device", self.device_id)
        if self.eligibility_check_s <= 0 or self.ack_timeout_s <= 0:
            raise ValueError("eligibility_check_s and ack_timeout_s must be > 0")
        if not self.no_task_warning_s > 0:
            raise ValueError(f"no_task_warning_s must be > 0, not {self.no_task_warning_s}")
        if not self.deadline_margin_s >= 0:
            raise ValueError(f"deadline_margin_s must be >= 0, not {self.deadline_margin_s}")
        if not self.status_interval_s > 0:
            raise ValueError(f"status_interval_s must be > 0, not {self.status_interval_s}")
        if self.inbound_queue_bytes < 64 * 1024:
            raise ValueError(f"inbound_queue_bytes must be >= 65536, "
                             f"not {self.inbound_queue_bytes}")
        check_name("federation", self.federation)
        self.state_dir = Path(self.state_dir)
