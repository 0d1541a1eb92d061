"""/api/lines: which model line each version belongs to and which devices are on which
line, with the reason of those that refused a model (aggregator/model_lines.py)."""

from __future__ import annotations

from typing import Any

from aggregator.web.paging import page_schema


def lines_schema() -> dict[str, Any]:
    """The OpenAPI schema of /api/lines' answer."""
    maybe_int = {"type": "integer", "nullable": True}
    maybe_text = {"type": "string", "nullable": True}
    line = {"type": "object", "properties": {
        "line": {"type": "string"}, "first_version": {"type": "integer"},
        "last_version": {"type": "integer"},
        "devices": {"type": "array", "items": {"type": "string"},
                    "description": "Devices holding a version of the line, by id: at "
                                   "most ?limit= of them"},
        "device_count": {"type": "integer",
                         "description": "How many devices hold a version of the line"}}}
    device = {"type": "object", "properties": {
        "device_id": {"type": "string"}, "model_version": maybe_int, "line": maybe_text,
        "refused": {**maybe_text, "description": "The device's status reason when it "
                                                 "refused a model, else null"}}}
    for part in (line, device):
        part["required"] = list(part["properties"])
    return {"type": "object", "required": ["lines", "devices"], "properties": {
        "lines": {"type": "array", "items": line, "description": "Newest line first"},
        "devices": {"type": "array", "items": device,
                    "description": "A page of the devices with a status, by id"},
        **page_schema()}}
