"""Which refused uploads were already answered, so a bad transfer gets one answer, not
one per chunk. Used by the single-process ingest (aggregator/core/ingest.py) and by each
parallel ingest worker (aggregator/ingest_worker.py)."""

from __future__ import annotations

from collections import OrderedDict

REMEMBERED = 1000  # the most recent refused transfers kept


class RefusedTransfers:
    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._remembered = remembered

    def already_answered(self, device: str, transfer: str | None) -> bool:
        """True when (device, transfer) was refused before; else remember it now. A
        transfer with no id cannot be remembered and is always answered."""
        if transfer is None:
            return False
        key = (device, transfer)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self._remembered:
            self._seen.popitem(last=False)
        return False
