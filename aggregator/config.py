"""The aggregator's settings: one dataclass, defaults that work; see docs/configuration.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.anomalies import AnomalyConfig
from aggregator.clusters import ClustersConfig
from aggregator.drift import DriftConfig
from aggregator.fairness import FairnessConfig
from aggregator.ingest_batch import IngestConfig
from aggregator.lifecycle.config import RolloutConfig
from aggregator.limits import LimitsConfig, check_limits
from aggregator.model_lines import LinesConfig
from aggregator.personalize import PersonalizeConfig
from aggregator.presence import PresenceConfig
from aggregator.privacy.config import PrivacyConfig, check_privacy
from aggregator.secagg.config import SecAggConfig, check_secagg
from aggregator.store_db import StoreLocation, describe, is_postgres
from aggregator.strategy.config import StrategyConfig
from aggregator.strategy.registry import STRATEGIES
from aggregator.upper_config import UpperConfig
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.protocol import DEFAULT_CHUNK_SIZE, TrainConfig
from edge_client.shared.protocol.messages import MAX_CHAIN
from edge_client.shared.protocol.topics import check_name
from edge_client.shared.security import AggregatorSecurity, BrokerAuth
from edge_client.shared.settings import from_table


@dataclass
class SyncConfig:
    """Synchronous rounds with a deadline and over-selection."""

    target_updates: int = 5  # close the round once this many updates are in
    over_selection: float = 0.0  # invite this fraction more devices than the target
    round_timeout_s: float = 60.0  # deadline after the task is published
    min_fraction: float = 0.6  # at the deadline, aggregate if this share of the target came
    wait_for_devices_s: float = 30.0  # then open a round with fewer devices than the target
    # A round that ends at its deadline with too few updates makes the next deadline this
    # many times longer, up to max_round_timeout_s (default 8 x round_timeout_s), so a
    # fleet slower than round_timeout_s still makes versions; the first version made
    # brings it back to round_timeout_s. 1.0 keeps every deadline at round_timeout_s.
    deadline_growth: float = 1.5
    max_round_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.target_updates < 1:
            raise ValueError("sync.target_updates must be >= 1")
        if self.over_selection < 0 or not 0 < self.min_fraction <= 1:
            raise ValueError("sync: need over_selection >= 0 and 0 < min_fraction <= 1")
        if self.round_timeout_s <= 0 or self.wait_for_devices_s < 0:
            raise ValueError("sync: round_timeout_s must be > 0, wait_for_devices_s >= 0")
        if self.deadline_growth < 1:
            raise ValueError(f"sync.deadline_growth must be >= 1, not {self.deadline_growth}")
        if self.max_round_timeout_s is not None and \
                self.max_round_timeout_s < self.round_timeout_s:
            raise ValueError(f"sync.max_round_timeout_s ({self.max_round_timeout_s}) must be "
                             f">= round_timeout_s ({self.round_timeout_s})")

    @property
    def longest_round_timeout_s(self) -> float:
        """The cap on a grown deadline."""
        if self.max_round_timeout_s is not None:
            return self.max_round_timeout_s
        return 8.0 * self.round_timeout_s


@dataclass
class AsyncConfig:
    """Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022)."""

    buffer_size: int = 3  # aggregate every K updates
    max_staleness: int = 10  # refuse updates whose base is older than this many versions
    staleness_exponent: float = 0.5  # weight = samples / (1 + staleness) ** exponent
    server_lr: float = 1.0
    # Devices training at a time (FedBuff's concurrency; aggregator/concurrency.py): each
    # task invites idle devices up to this many, and more as updates come in. 0: every
    # device may train for every version (no bound; fine for small fleets).
    concurrency: int = 0

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or self.max_staleness < 0:
            raise ValueError("async: need buffer_size >= 1 and max_staleness >= 0")
        if self.staleness_exponent < 0 or self.server_lr <= 0:
            raise ValueError("async: need staleness_exponent >= 0 and server_lr > 0")
        if self.concurrency < 0:
            raise ValueError(f"async.concurrency must be >= 0 (0: no bound), "
                             f"not {self.concurrency}")
        if 0 < self.concurrency < self.buffer_size:
            raise ValueError(f"async.concurrency ({self.concurrency}) must be >= buffer_size "
                             f"({self.buffer_size}): fewer devices in flight than a version "
                             f"needs would never make one (2-4 x buffer_size is typical)")


@dataclass
class DownlinkConfig:
    """How new models reach devices: always the full model, plus a delta when enabled."""

    delta: bool = True  # publish the change from the previous version, compressed
    codec: CodecConfig = field(default_factory=lambda: CodecConfig(
        sparsify="none", quantize="q8", error_feedback=True, compress="zlib"))
    full: str = "f32"  # the full model as "f32", or "f16" (half the bytes; the global model
    #                    is then kept to values float16 can hold, so every copy is exact)
    keep_deltas: int = 8  # retain this many versions' deltas and list them in the manifest,
    #                       so devices that skipped versions apply them in turn; 0 or 1: one

    def __post_init__(self) -> None:
        if self.full not in ("f32", "f16"):
            raise ValueError("downlink.full must be 'f32' or 'f16'")
        if not 0 <= self.keep_deltas <= MAX_CHAIN:
            raise ValueError(f"downlink.keep_deltas must be between 0 and {MAX_CHAIN}")
        if self.codec.adaptive:
            raise ValueError("downlink.codec: energy (adaptive top-k) is for the uplink only")


@dataclass
class DashboardConfig:
    """The web dashboard, REST API and metrics (docs/gateway.md)."""

    enabled: bool = False
    host: str = "127.0.0.1"  # "0.0.0.0" for the whole LAN
    port: int = 8080
    read_token_file: Path | None = None  # None: GET API and /metrics open (closed LAN only)
    admin_token_file: Path | None = None  # None: admin API off (403)


@dataclass
class AggregatorConfig:
    federation: str = "default"
    host: str = "127.0.0.1"
    port: int = 1883
    db_path: Path = Path("fedge-aggregator.sqlite3")
    # "postgresql://user@host/db": the store in PostgreSQL (the `postgres` extra) instead
    # of the SQLite file db_path; "" keeps SQLite (docs/configuration.md#postgresql).
    db_url: str = ""
    mode: str = "sync"  # "sync" or "async"
    rounds: int = 10  # model versions to produce; 0 runs until stopped
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_update_bytes: int = 64 * 2**20
    upload_timeout_s: float = 300.0  # drop an upload not complete this long after it began
    keepalive_s: int = 30
    presence_settle_s: float = 0.5  # after connecting, collect device statuses this long
    checkin_interval_s: float = 60.0  # pace steering: devices that sleep come back after this
    checkin_jitter: float = 0.5  # ... times a random factor in [1 - jitter, 1 + jitter]
    waiting_log_s: float = 30.0  # while nothing progresses, say what it waits for this often
    seed: int = 0  # device selection
    train: TrainConfig = field(default_factory=TrainConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    async_: AsyncConfig = field(default_factory=AsyncConfig)
    uplink: CodecConfig | None = None  # how devices encode updates; None: dense float32
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)
    security: AggregatorSecurity = field(default_factory=AggregatorSecurity)
    broker_auth: BrokerAuth = field(default_factory=BrokerAuth)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)  # docs/strategies.md
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # docs/privacy.md
    anomalies: AnomalyConfig = field(default_factory=AnomalyConfig)  # docs/privacy.md
    secagg: SecAggConfig = field(default_factory=SecAggConfig)  # docs/secure-aggregation.md
    presence: PresenceConfig = field(default_factory=PresenceConfig)  # docs/security.md
    limits: LimitsConfig = field(default_factory=LimitsConfig)  # docs/abuse.md
    ingest: IngestConfig = field(default_factory=IngestConfig)  # docs/gateway.md
    fairness: FairnessConfig = field(default_factory=FairnessConfig)  # docs/gateway.md
    # docs/heterogeneity.md: personal layers or models, and k clustered model lines
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)
    clusters: ClustersConfig = field(default_factory=ClustersConfig)
    upper: UpperConfig = field(default_factory=UpperConfig)  # docs/tiers.md
    drift: DriftConfig = field(default_factory=DriftConfig)  # docs/lifecycle.md
    lines: LinesConfig = field(default_factory=LinesConfig)  # docs/lifecycle.md
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # docs/lifecycle.md

    def __post_init__(self) -> None:
        check_name("federation", self.federation)
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', not {self.mode!r}")
        if self.rounds < 0:
            raise ValueError("rounds must be >= 0")
        if self.train.seed:
            raise ValueError("train.seed is not a setting: every device seeds each fit itself")
        size = self.sync.target_updates if self.mode == "sync" else self.async_.buffer_size
        too_few = STRATEGIES[self.strategy.name].too_few(self.strategy, size)
        if too_few is not None:
            raise ValueError(too_few)
        if self.checkin_interval_s < 0 or not 0 <= self.checkin_jitter < 1:
            raise ValueError("need checkin_interval_s >= 0 and 0 <= checkin_jitter < 1")
        if not self.waiting_log_s > 0:
            raise ValueError(f"waiting_log_s must be > 0, not {self.waiting_log_s}")
        if not 1024 <= self.chunk_size <= 256 * 2**20:
            raise ValueError("chunk_size must be between 1 KiB and 256 MiB")
        check_privacy(self)
        check_secagg(self)
        check_limits(self)
        check_heterogeneity(self)
        if self.upper.enabled and self.upper.federation == self.federation:
            raise ValueError(f"upper.federation must differ from federation "
                             f"({self.federation!r}): the tiers would share topics")
        self.db_path = Path(self.db_path)
        if self.db_url and not is_postgres(self.db_url):
            raise ValueError(f"db_url must start with postgresql:// (or leave it out for "
                             f"the SQLite file db_path), not {describe(self.db_url)!r}")
        if self.db_url and describe(self.db_url).endswith("<not a valid URL>"):
            raise ValueError("db_url is not a valid URL (postgresql://user:password@host:"
                             "port/dbname)")

    @property
    def store_location(self) -> StoreLocation:
        """Where the store is: the db_url's PostgreSQL database, else the db_path file."""
        return self.db_url or self.db_path

    @property
    def store_name(self) -> str:
        """The store for logs and messages (a URL without its password)."""
        return describe(self.store_location)


def check_heterogeneity(config: AggregatorConfig) -> None:
    """Contribution weighting reads each update's metrics: not under DP, whose noise is
    calibrated to weights that do not depend on the data, nor secure aggregation. k model
    lines average each cluster over its own devices: a mean, in the clear."""
    weighting = config.strategy.weighting
    if weighting != "samples" and (config.privacy.enabled or config.secagg.enabled):
        raise ValueError(f"strategy.weighting = {weighting!r} cannot run with [privacy] or "
                         "[secagg]: weights read from each update's metrics would break the "
                         "noise's calibration, and secure rounds reveal no metric")
    if not config.clusters.on:
        return
    if not STRATEGIES[config.strategy.name].mean_based:
        raise ValueError(f"clusters.k = {config.clusters.k} needs a mean-based strategy "
                         f"(fedavg or a server optimizer), not {config.strategy.name!r}")
    if config.privacy.enabled or config.secagg.enabled:
        raise ValueError(f"clusters.k = {config.clusters.k} cannot run with [privacy] or "
                         "[secagg]: each update must name its cluster in the clear")
    if config.rollout.enabled:
        raise ValueError(f"clusters.k = {config.clusters.k} cannot run with [rollout]: "
                         "canaries judge one model per version, a clustered version holds k")


def load_aggregator_config(table: dict[str, Any], where: str = "config",
                           also_known: tuple[str, ...] = ()) -> AggregatorConfig:
    """The aggregator's TOML: top-level keys, plus [train], [sync] and [async] tables."""
    return from_table(AggregatorConfig, table, where, nested={"async": "async_"},
                      also_known=also_known)
