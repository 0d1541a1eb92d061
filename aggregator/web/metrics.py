"""Prometheus metrics, read from the store at each scrape.

A collector on a registry of the app's own (never prometheus-client's global one), so
two apps in one process, or a test beside a running service, do not share metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from aggregator.status import BROKER_NOTE, FINISHED_NOTE
from aggregator.store import Store
from aggregator.version_record import VersionRecord
from aggregator.web import readmodel
from aggregator.web.drift_view import drift_metrics
from aggregator.web.history_cache import HistoryCache


class StoreCollector:
    """Turns the store's current state into metric families when Prometheus scrapes."""

    def __init__(self, open_store: Callable[[], Store], history: HistoryCache) -> None:
        self.open_store = open_store
        self.history = history

    def collect(self) -> Iterator[Metric]:
        store = self.open_store()
        try:
            yield from _families(store, self.history)
        finally:
            store.close()


def _families(store: Store, cache: HistoryCache) -> list[Metric]:
    history = cache.records(store)
    devices = readmodel.device_counts(store)
    families: list[Metric] = []
    if history:
        families.append(GaugeMetricFamily("fedge_model_version", "Current global model version",
                                          value=history[-1].version))
    families.append(GaugeMetricFamily("fedge_devices_online", "Devices whose status is online",
                                      value=devices["online"]))
    families.append(GaugeMetricFamily(
        "fedge_devices_eligible", "Devices online and eligible to train",
        value=devices["eligible"]))
    families.append(_updates_by_state(store))
    families.append(CounterMetricFamily("fedge_rejections", "Updates refused, with a reason",
                                        value=readmodel.rejection_count(store)))
    families.append(CounterMetricFamily(
        "fedge_update_bytes", "Bytes of stored update messages, any state",
        value=readmodel.stored_update_bytes(store)))
    families += _health(store, history)
    evaluated = [h for h in history if h.accuracy is not None]
    if evaluated:
        families.append(GaugeMetricFamily("fedge_last_accuracy",
                                          "Test accuracy of the latest evaluated version",
                                          value=evaluated[-1].accuracy))
    return (families + cache.derived(store, "metrics-fairness", _fairness)
            + cache.derived(store, "metrics-personal", _personal) + drift_metrics(store)
            + _stages(store))


def _stages(store: Store) -> list[Metric]:
    """The served version, how many versions each stage holds, rollbacks (docs/lifecycle.md)."""
    stages = store.stages()
    production = [v for v, s in stages.items() if s.value == "production"]
    families: list[Metric] = []
    if production:
        families.append(GaugeMetricFamily("fedge_production_version",
                                          "The model version devices serve",
                                          value=max(production)))
    by_stage = GaugeMetricFamily("fedge_versions_by_stage", "Model versions by stage",
                                 labels=["stage"])
    for stage in ("candidate", "canary", "production", "rolled_back", "retired"):
        by_stage.add_metric([stage], sum(1 for s in stages.values() if s.value == stage))
    return [*families, by_stage]


_FAIRNESS_GAUGES = (
    ("median", "fedge_device_accuracy_median",
     "Median accuracy on the devices' own data (latest version with figures)"),
    ("p10", "fedge_device_accuracy_p10", "10th percentile of the devices' accuracy"),
    ("worst_decile", "fedge_device_accuracy_worst_decile",
     "Mean accuracy of the worst tenth of the devices"),
    ("under_floor", "fedge_device_accuracy_under_floor",
     "Devices below [fairness] accuracy_floor"))


def _fairness(history: list[VersionRecord]) -> list[Metric]:
    """The latest version whose devices reported their accuracy (none under secure
    aggregation, which reveals no per-device metric)."""
    for row in readmodel.fairness(history, len(history), top=0):
        if row["devices"]:
            return [GaugeMetricFamily(name, text, value=row[key])
                    for key, name, text in _FAIRNESS_GAUGES if row[key] is not None]
    return []


def _personal(history: list[VersionRecord]) -> list[Metric]:
    """Personalised and clustered federations (docs/heterogeneity.md): the devices' mean
    global and personal accuracy on their held-out data, and each cluster's devices."""
    view = readmodel.personal(history)
    if view["version"] is None:
        return []
    families: list[Metric] = [
        GaugeMetricFamily(f"fedge_{key}_mean", text, value=view[key])
        for key, text in (("global_accuracy", "Mean over devices: the global model (its "
                                              "cluster's) on their held-out data"),
                          ("personal_accuracy", "Mean over devices: their own model on "
                                                "their held-out data"))
        if view[key] is not None]
    if view["cluster_sizes"]:
        sizes = GaugeMetricFamily("fedge_cluster_devices", "Devices whose latest update "
                                  "chose each cluster", labels=["cluster"])
        for cluster, count in view["cluster_sizes"].items():
            sizes.add_metric([cluster], count)
        families.append(sizes)
    return families


def _health(store: Store, history: list[VersionRecord]) -> list[Metric]:
    """What the alert rules in deploy/prometheus-alerts.yml watch: the broker link, stalled
    or aborting rounds, the privacy budget."""
    families: list[Metric] = []
    broker = store.note(BROKER_NOTE)
    if broker is not None:
        families.append(GaugeMetricFamily("fedge_broker_connected",
                                          "1 while the service is connected to the broker",
                                          value=int(bool(broker["connected"]))))
    if history:
        families.append(GaugeMetricFamily("fedge_last_version_timestamp_seconds",
                                          "When the latest model version was made (unix)",
                                          value=history[-1].created_at))
    aborted = store.db.execute("SELECT COUNT(*) FROM tasks WHERE state='aborted'").fetchone()
    families.append(CounterMetricFamily("fedge_rounds_aborted",
                                        "Rounds that reached their deadline without enough "
                                        "updates, or failed", value=aborted[0]))
    families.append(GaugeMetricFamily("fedge_training_finished",
                                      "1 once every round is done",
                                      value=int(bool(store.note(FINISHED_NOTE)))))
    privacy = readmodel.privacy(store, history)
    if privacy is not None:
        families.append(GaugeMetricFamily("fedge_privacy_epsilon",
                                          "Differential privacy spent so far (epsilon)",
                                          value=privacy["epsilon"]))
        if privacy.get("target_epsilon"):
            families.append(GaugeMetricFamily("fedge_privacy_target_epsilon",
                                              "The privacy budget (target epsilon)",
                                              value=privacy["target_epsilon"]))
    return families


def _updates_by_state(store: Store) -> GaugeMetricFamily:
    """A gauge although named _total: pending updates leave that state when aggregated."""
    family = GaugeMetricFamily("fedge_updates_total", "Stored updates by state",
                               labels=["state"])
    for state, count in readmodel.update_counts(store).items():
        family.add_metric([state], count)
    return family


def make_registry(open_store: Callable[[], Store], history: HistoryCache) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(open_store, history))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
