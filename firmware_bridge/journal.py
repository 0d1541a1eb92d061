"""What the MCU said, kept twice: the newest in memory, everything in events.jsonl.

The bridge's thread writes; other threads read the deques (`Bridge.predictions`,
`Bridge.logs`). Each record goes to the file first, so whoever sees it in memory also
finds it on disk.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

from firmware_bridge.bridge_config import LogRecord, PredictionRecord
from firmware_bridge.link import Log, LogLevel, Prediction

log = logging.getLogger("firmware_bridge.bridge")


class DeviceJournal:
    """Predictions, device logs and events (hello, model) of one MCU."""

    def __init__(self, path: Path, recent: int) -> None:
        self.path = path
        self.predictions: deque[PredictionRecord] = deque(maxlen=recent)
        self.logs: deque[LogRecord] = deque(maxlen=recent)

    def prediction(self, device_id: str, p: Prediction) -> None:
        record = PredictionRecord(time.time(), device_id, p.model_version, p.class_index,
                                  p.score)
        self.record({"kind": "prediction", "device": record.device_id,
                     "model_version": p.model_version, "class": p.class_index,
                     # the MCU's f32 may be NaN or inf, which JSON has no words for
                     "score": p.score if math.isfinite(p.score) else None})
        self.predictions.append(record)

    def device_log(self, device_id: str, entry: Log) -> None:
        level = LogLevel(entry.level).name
        record = LogRecord(time.time(), device_id, level, entry.text)
        log.log(getattr(logging, level), "device %s: %s", record.device_id, entry.text)
        self.record({"kind": "log", "device": record.device_id, "level": level,
                     "text": entry.text})
        self.logs.append(record)

    def record(self, entry: dict[str, Any]) -> None:
        """Append to events.jsonl in the data dir: what the MCU said, for later reading."""
        entry = {"time": round(time.time(), 3), **entry}
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as exc:
            log.error("bridge: cannot write %s: %s", self.path, exc)
