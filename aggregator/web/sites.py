"""/api/sites on an upper tier and /api/upper on a site (docs/tiers.md), from the store.

A site is a device of the upper tier whose updates are site aggregates: its uplink adds
`site_updates` (device updates in the aggregate) and `site_versions` (site versions it
spans) to each aggregate's metrics. Each row says whether the site is online, its last
aggregate (when, from which upper version, its weight, what became of it) and the
device updates behind it.
"""

from __future__ import annotations

import json
from typing import Any

from aggregator.core.upper import UPPER_NOTE
from aggregator.store import Store

SITE_METRIC = "site_updates"  # set by fedge/tiers/uplink.py


def sites(store: Store) -> list[dict[str, Any]]:
    status = {d["device_id"]: d for d in store.devices()}
    aggregated = dict(store.db.execute("SELECT device_id, COUNT(*) FROM updates "
                                       "WHERE state='aggregated' GROUP BY device_id"))
    rows = store.db.execute("SELECT device_id, metrics, base_version, num_samples, state, "
                            "received_at FROM (SELECT device_id, metrics, base_version, "
                            "num_samples, state, received_at, ROW_NUMBER() OVER (PARTITION "
                            "BY device_id ORDER BY received_at DESC) AS n FROM updates) "
                            "AS newest WHERE n = 1")  # the newest per site, on both engines
    out = []
    for device, metrics_text, base, samples, state, received_at in rows:
        metrics = json.loads(metrics_text)
        if SITE_METRIC not in metrics:
            continue  # a device, not a site
        seen = status.get(device, {})
        out.append({"site": device, "online": bool(seen.get("online")) if seen else None,
                    "last_seen": seen.get("last_seen"),
                    "model_version": seen.get("model_version"),
                    "aggregates_used": aggregated.get(device, 0),
                    "last_aggregate_at": received_at, "last_aggregate_upper_version": base,
                    "last_aggregate_samples": samples, "last_aggregate_state": state,
                    "devices_behind": _whole(metrics.get(SITE_METRIC)),
                    "site_versions": _whole(metrics.get("site_versions"))})
    return sorted(out, key=lambda row: row["site"])


def upper(store: Store) -> dict[str, Any] | None:
    """A site's view of its upper tier: the upper model it adopted, as which site version,
    whether the upper tier invited it to a round from it, and the site versions, updates
    and samples since; None on a gateway that is no site."""
    note = store.note(UPPER_NOTE)
    if not isinstance(note, dict):
        return None
    keys = ("upper_version", "site_version", "asked", "versions", "updates", "samples")
    return {key: note.get(key) for key in keys}


def _whole(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value == value else None
