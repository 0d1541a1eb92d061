"""/api/devices: one page of the fleet's devices, each with its counts.

At 10,000 devices the listing is read a page at a time: the ids come from one UNION
over indexed columns, and only the page's devices are counted (contributions,
rejections, their latest update's own-data accuracy), a few queries per page rather
than a scan and a Python row for every device and every update on every poll.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aggregator.store import Store
from aggregator.web.paging import Page, chunks
from aggregator.web.readmodel import finite, last_local_accuracy, secure_contributions

_STATUS = ("device_id", "online", "eligible", "reason", "model_version", "last_seen",
           "battery_pct")


def device_ids(store: Store) -> list[str]:
    """Every device with a status, plus any that only ever sent updates (stored or
    refused) or took part in a secure sum, sorted."""
    ids = {row[0] for row in store.db.execute(
        "SELECT device_id FROM devices UNION SELECT device_id FROM updates "
        "UNION SELECT device_id FROM rejections")}
    ids.update(secure_contributions(store))
    return sorted(ids)


def _counts(store: Store, table: str, counted: str, ids: Sequence[str]) -> dict[str, int]:
    """Per device of `ids`, its rows in `table` for which `counted` holds. The condition
    is summed rather than put in the WHERE, so that the engine looks the devices up by
    their index, not every aggregated update up by its state."""
    out: dict[str, int] = {}
    for marks, part in chunks(ids):
        out.update((device, int(n)) for device, n in store.db.execute(
            f"SELECT device_id, SUM(CASE WHEN {counted} THEN 1 ELSE 0 END) FROM {table} "
            f"WHERE device_id IN ({marks}) GROUP BY device_id", part))
    return out


def statuses(store: Store, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The last status of each of `ids` that sent one."""
    out = {}
    for marks, part in chunks(ids):
        for row in store.db.execute(f"SELECT {', '.join(_STATUS)} FROM devices "
                                    f"WHERE device_id IN ({marks})", part):
            out[row[0]] = dict(zip(_STATUS, row, strict=True))
    return out


def device_page(store: Store, page: Page) -> dict[str, Any]:
    """What /api/devices serves: the page's devices, sorted by id, and how many in all."""
    every = device_ids(store)
    ids = page.of(every)
    status = statuses(store, ids)
    contributions = _counts(store, "updates", "state='aggregated'", ids)
    secure = secure_contributions(store)
    rejections = _counts(store, "rejections", "1=1", ids)
    local = last_local_accuracy(store, ids)
    unknown = {"online": None, "eligible": None, "reason": "", "model_version": None,
               "last_seen": None, "battery_pct": None}
    rows = []
    for d in ids:
        seen = status.get(d)
        row = {"device_id": d, **unknown} if seen is None else {
            **seen, "online": bool(seen["online"]), "eligible": bool(seen["eligible"])}
        rows.append(finite({**row,
                            "contributions": contributions.get(d, 0) + secure.get(d, 0),
                            "rejections": rejections.get(d, 0),
                            **local.get(d, {"last_local_accuracy": None,
                                            "last_local_version": None})}))
    return {"devices": rows, **page.meta(len(every))}
