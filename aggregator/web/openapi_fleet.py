"""OpenAPI schemas of the fleet's state as `fedge status` and an upper tier's sites
show it (/api/status, /api/sites); the rest of the document is in openapi.py."""

from __future__ import annotations

from typing import Any


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description}


def status_schema() -> dict[str, Any]:
    """aggregator.status.FleetStatus as JSON."""
    num = {"type": "number", "nullable": True}
    maybe_int = {"type": "integer", "nullable": True}
    maybe_bool = {"type": "boolean", "nullable": True}
    text = {"type": "string"}
    round_ = {"type": "object", "nullable": True, "properties": {
        "task_id": text, "round": {"type": "integer"}, "mode": text,
        "model_version": {"type": "integer"}, "invited": maybe_int,
        "updates": {"type": "integer"}, "opened_s_ago": {"type": "number"},
        "deadline_in_s": num}}
    device = {"type": "object", "properties": {
        "device_id": text, "online": maybe_bool, "eligible": maybe_bool, "reason": text,
        "model_version": maybe_int, "last_seen_s_ago": num}}
    rejection = {"type": "object", "properties": {
        "device_id": text, "reason": text, "s_ago": {"type": "number"}}}
    schema = {"type": "object", "properties": {
        "model_version": maybe_int, "versions": {"type": "integer"}, "accuracy": num,
        "last_version_s_ago": num, "round": round_,
        "devices": {"type": "array", "items": device},
        "not_eligible": {"type": "object", "additionalProperties": {"type": "integer"}},
        "rejections_total": {"type": "integer"},
        "recent_rejections": {"type": "array", "items": rejection},
        "stopped": {"type": "string", "nullable": True}, "finished": {"type": "boolean"},
        "broker": {"type": "object", "nullable": True, "properties": {
            "connected": {"type": "boolean"}, "since": {"type": "number"}, "reason": text}},
        "tier": _described({"type": "string", "nullable": True},
                           "Where it sits in a tree of aggregators (docs/tiers.md)")}}
    schema["required"] = [key for key in schema["properties"] if key != "tier"]
    return schema


def site_schema() -> dict[str, Any]:
    """aggregator/tier_view.py's rows."""
    integer = {"type": "integer", "nullable": True}
    number = {"type": "number", "nullable": True}
    return {"type": "object", "properties": {
        "site": {"type": "string"}, "online": {"type": "boolean", "nullable": True},
        "last_seen": number, "model_version": integer, "aggregates_used": integer,
        "last_aggregate_at": number, "last_aggregate_upper_version": integer,
        "last_aggregate_samples": _described(integer, "The aggregate's weight: the samples "
                                                      "of the device updates in it"),
        "last_aggregate_state": {"type": "string"},
        "devices_behind": _described(integer, "Device updates in the last aggregate"),
        "site_versions": _described(integer, "Site versions the last aggregate spans"),
        "samples_used": _described(integer, "Samples of its aggregates that went into versions"),
        "sample_share": _described(number, "Its share of the sites' samples_used"),
        "aggregate_share": _described(number, "Its share of the sites' aggregates_used")}}
