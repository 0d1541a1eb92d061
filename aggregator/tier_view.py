"""/api/sites on an upper tier and /api/upper on a site (docs/tiers.md), from the store.

A site is a device of the upper tier whose updates are site aggregates: its uplink adds
`site_updates` (device updates in the aggregate) and `site_versions` (site versions it
spans) to each aggregate's metrics. Each row says whether the site is online, its last
aggregate (when, from which upper version, its weight, what became of it), the
device updates behind it, and its contribution: its share of the samples and of the
aggregates that went into versions.
"""

from __future__ import annotations

import json
from typing import Any

from aggregator.store import Store
from aggregator.upper_config import LINK_NOTE, UPPER_NOTE

SITE_METRIC = "site_updates"  # set by fedge/tiers/uplink.py
_IS_SITE = f"""metrics LIKE '%"{SITE_METRIC}"%'"""  # as in the index updates_sites


def sites(store: Store) -> list[dict[str, Any]]:
    # Only updates whose metrics name SITE_METRIC are a site's, found through the
    # partial index updates_sites (aggregator/store_base.py: the same literal condition,
    # so that both engines use it): a gateway of 10,000 devices has none, and its
    # devices' rows are neither read nor ranked.
    used = {device: (count, samples) for device, count, samples in store.db.execute(
        "SELECT device_id, SUM(CASE WHEN state='aggregated' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN state='aggregated' THEN num_samples ELSE 0 END) FROM updates "
        f"WHERE {_IS_SITE} GROUP BY device_id")}
    rows = store.db.execute("SELECT device_id, metrics, base_version, num_samples, state, "
                            "received_at FROM (SELECT device_id, metrics, base_version, "
                            "num_samples, state, received_at, ROW_NUMBER() OVER (PARTITION "
                            "BY device_id ORDER BY received_at DESC) AS n FROM updates "
                            f"WHERE {_IS_SITE}) AS newest WHERE n = 1"
                            ).fetchall()  # the newest per site
    status = {d["device_id"]: d for d in store.devices()} if rows else {}
    out = []
    for device, metrics_text, base, samples, state, received_at in rows:
        metrics = json.loads(metrics_text)
        if SITE_METRIC not in metrics:
            continue  # a device, not a site
        seen = status.get(device, {})
        out.append({"site": device, "online": bool(seen.get("online")) if seen else None,
                    "last_seen": seen.get("last_seen"),
                    "model_version": seen.get("model_version"),
                    "aggregates_used": int(used.get(device, (0, 0))[0]),
                    "samples_used": int(used.get(device, (0, 0))[1] or 0),
                    "last_aggregate_at": received_at, "last_aggregate_upper_version": base,
                    "last_aggregate_samples": samples, "last_aggregate_state": state,
                    "devices_behind": _whole(metrics.get(SITE_METRIC)),
                    "site_versions": _whole(metrics.get("site_versions"))})
    _shares(out)
    return sorted(out, key=lambda row: row["site"])


def _shares(rows: list[dict[str, Any]]) -> None:
    """Each site's share of the sites' aggregated samples and aggregates (None: none yet)."""
    for key, share in (("samples_used", "sample_share"), ("aggregates_used", "aggregate_share")):
        total = sum(row[key] for row in rows)
        for row in rows:
            row[share] = row[key] / total if total else None


def upper(store: Store) -> dict[str, Any] | None:
    """A site's view of its upper tier: its broker and federation, the upper model it
    adopted, as which site version, whether the upper tier invited it to a round from it,
    the site versions, updates and samples since, and whether it holds its rounds for the
    upper tier (aggregator/core/upper.py's rule); None on a gateway that is no site."""
    note, link = store.note(UPPER_NOTE), store.note(LINK_NOTE)
    if not isinstance(note, dict) and not isinstance(link, dict):
        return None
    note = note if isinstance(note, dict) else {}
    link = link if isinstance(link, dict) else {}
    keys = ("upper_version", "site_version", "asked", "versions", "updates", "samples")
    out = {key: note.get(key) for key in keys}
    for key in ("site_id", "broker", "federation", "every_versions"):
        out[key] = link.get(key)
    every = link.get("every_versions")
    out["holding"] = (out["upper_version"] is None or not out["asked"]
                      or (every is not None and (out["versions"] or 0) >= every))
    return out


def tier_line(store: Store) -> str | None:
    """One line saying where this gateway sits in a tree (`fedge status`); None when alone."""
    view = upper(store)
    if view is not None:
        at = "no upper model yet" if view["upper_version"] is None else (
            f"upper version {view['upper_version']} as site version {view['site_version']}, "
            f"{view['versions']} site version(s) since")
        state = "holding for the upper tier" if view["holding"] else "training"
        return (f"site {view['site_id'] or '?'} of {view['federation'] or '?'} at "
                f"{view['broker'] or '?'}: {at}; {state}")
    rows = sites(store)
    if not rows:
        return None
    online = sum(1 for row in rows if row["online"])
    return f"upper tier of {len(rows)} site(s), {online} online"


def _whole(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value == value else None
