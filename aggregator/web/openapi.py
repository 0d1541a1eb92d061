"""The OpenAPI 3 description of the gateway's HTTP API, written by hand.

A test checks that every /api/ route of the app appears here, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from aggregator.web import bodies
from aggregator.web.drift_view import drift_schema
from aggregator.web.lines_view import lines_schema
from aggregator.web.openapi_fleet import site_schema, status_schema
from aggregator.web.paging import MAX_LIMIT, page_parameters, page_schema

JSON = bodies.JSON
MAX_VERSION = 2**63 - 1  # the largest SQLite INTEGER: no version number can be larger
FAIRNESS_DEFAULT = 20  # /api/fairness: versions shown without ?latest=
FAIRNESS_MAX = 1000


def _bearer() -> list[dict[str, list]]:
    """GETs take the read or the admin token (open without a read token); admin: admin."""
    return [{"bearer": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


_REASONS = {400: "Bad input: the reason names the field or parameter",
            401: "No token given", 403: "The token does not grant this",
            404: "Not found", 409: "Well-formed, but the running service refuses it",
            413: f"The body is over {bodies.MAX_BODY_BYTES} bytes",
            415: "The body is not sent as application/json",
            501: "Not offered by this gateway", 503: "The store is busy or unavailable: retry"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ref("Error"), _REASONS[c]) for c in codes}


def _listing(key: str, item: str, paged: bool = False) -> dict[str, Any]:
    """{key: [item, ...]}; `paged`: a page of them, with how many there are in all."""
    listing: dict[str, Any] = {"type": "object", "required": [key],
               "properties": {key: {"type": "array", "items": _ref(item)}}}
    if paged:
        listing["properties"].update(page_schema())
        listing["required"] = [key, "total", "limit", "offset"]
    return listing


def _get(summary: str, ok: dict[str, Any], *codes: int, **extra: Any) -> dict[str, Any]:
    """Every GET can meet a query parameter it does not take (400) and a busy store (503)."""
    return {"get": {"summary": summary, "security": _bearer(),
                    "responses": {"200": ok, **_errors(400, 401, 403, 503, *codes)}, **extra}}


def _post(summary: str, body: bodies.Body, ok_code: str, ok: dict[str, Any],
          *codes: int) -> dict[str, Any]:
    return {"post": {"summary": summary, "security": _bearer(),
                     "requestBody": {"required": True,
                                     "content": {JSON: {"schema": body.schema()}}},
                     "responses": {ok_code: _json(ok),
                                   **_errors(400, 401, 403, 413, 415, 503, *codes)}}}


def _body(**props: dict[str, Any]) -> dict[str, Any]:
    """An object with exactly these properties, all present."""
    return {"type": "object", "required": list(props), "properties": props,
            "additionalProperties": False}


def _paths() -> dict[str, Any]:
    version = {"type": "integer", "minimum": 0, "maximum": MAX_VERSION}
    version_query = {"name": "version", "in": "query", "required": False, "schema": version,
                     "description": "only this model version"}
    version_path = {"name": "version", "in": "path", "required": True, "schema": version}
    text = {"type": "string"}
    blob = {"description": "The model as devices receive it: a MessagePack `Model` message",
            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                "format": "binary"}}}}
    return {
        "/api/overview": _get("Headline numbers of the federation", _json(_ref("Overview"))),
        "/api/versions": _get("Every model version with its info",
                              _json(_listing("versions", "Version")), parameters=[{
                                  "name": "brief", "in": "query", "required": False,
                                  "description": "true: without the parts with a row per "
                                                 "device (devices, fairness, personal), "
                                                 "with device_count instead",
                                  "schema": {"type": "string", "enum": ["true", "false"]}}]),
        "/api/stages": _get("Each version's stage, the open canary and its reports, the pin, "
                            "the audit trail of every move, commands not applied yet",
                            _json({"type": "object", "required": ["stages", "audit"]})),
        "/api/devices": _get("Devices, a page at a time by id: status, eligibility, "
                             "contributions, rejections",
                             _json(_listing("devices", "Device", paged=True)),
                             parameters=page_parameters("devices")),
        "/api/sites": _get("An upper tier's sites: online, last aggregate, devices behind "
                           "each (docs/tiers.md)", _json(_listing("sites", "Site"))),
        "/api/upper": _get("A site's upper tier: the upper model it adopted and its count "
                           "since (docs/tiers.md); null on a gateway that is no site",
                           _json({"type": "object", "properties": {"upper": {
                               "type": "object", "nullable": True, "properties": {
                                   "upper_version": {"type": "integer", "nullable": True},
                                   "site_version": {"type": "integer"},
                                   "asked": {"type": "boolean"},
                                   "versions": {"type": "integer"},
                                   "updates": {"type": "integer"},
                                   "samples": {"type": "integer"},
                                   "site_id": {"type": "string", "nullable": True},
                                   "broker": {"type": "string", "nullable": True},
                                   "federation": {"type": "string", "nullable": True},
                                   "every_versions": {"type": "integer", "nullable": True},
                                   "holding": {"type": "boolean"}}}}})),
        "/api/anomalies": _get("Devices whose recent updates were rejected or clipped, a "
                               "page at a time by id",
                               _json(_ref("Anomalies")),
                               parameters=[*page_parameters("devices"), {
                                   "name": "flagged", "in": "query", "required": False,
                                   "description": "true: only the flagged devices; false: "
                                                  "only the others",
                                   "schema": {"type": "string", "enum": ["true", "false"]}}]),
        "/api/audit": _get("Which devices' updates went into which version, a page at a "
                           "time", _json(_listing("audit", "AuditRow", paged=True)),
                           parameters=[version_query, *page_parameters("rows")]),
        "/api/fairness": _get("Per version, newest first: the spread of accuracy on the "
                              "devices' own data and each device's share of the samples",
                              _json(_listing("fairness", "FairnessRow")),
                              parameters=[{"name": "latest", "in": "query", "required": False,
                                           "description": "how many versions (default "
                                                          f"{FAIRNESS_DEFAULT})",
                                           "schema": {"type": "integer", "minimum": 1,
                                                      "maximum": FAIRNESS_MAX}},
                                          {"name": "top", "in": "query", "required": False,
                                           "description": "only the largest this many "
                                                          "shares in contributions and "
                                                          "weights (default: every device)",
                                           "schema": {"type": "integer", "minimum": 0,
                                                      "maximum": MAX_LIMIT}}]),
        "/api/personal": _get("Personalised and clustered federations: each device's global "
                              "vs personal accuracy on its held-out data and its cluster, "
                              "from the latest version that has them (a page of the "
                              "devices, by id)", _json(_ref("Personal")),
                              parameters=page_parameters("devices")),
        "/api/drift": _get("Drift: each device's latest scores and their history, the "
                           "[drift] rule and the retraining campaigns it opened (a page "
                           "of the devices, by id)", _json(_ref("Drift")),
                           parameters=page_parameters("devices")),
        "/api/lines": _get("Model lines: the versions of each architecture, which devices "
                           "are on which line, and why some refused a model (a page of "
                           "the devices, by id)", _json(_ref("Lines")),
                           parameters=page_parameters("devices")),
        "/api/enrolment": _get("Enrolled device keys and revocations, a page at a time "
                               "by id", _json(_listing("enrolment", "Enrolment", paged=True)),
                               parameters=page_parameters("devices")),
        "/api/models/{version}": _get("Download one model version", blob, 404,
                                      parameters=[version_path]),
        "/api/status": _get("The federation at a glance, as `fedge status` prints it",
                            _json(_ref("Status"))),
        "/api/health": {"get": {
            "summary": "For probes, without a token: 200 while the service loop runs and "
                       "holds its broker connection, else 503", "security": [],
            "responses": {"200": _json(_ref("Health")),
                          "503": _json(_ref("Health"), "Not healthy: `problem` says why"),
                          **_errors(400)}}},
        "/api/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": _json({"type": "object"}),
                                                    **_errors(400)}}},
        "/api/admin/enroll": _post("Allow a device's Ed25519 public key", bodies.ENROLL,
                                   "200", _body(enrolled=text)),
        "/api/admin/revoke": _post("Refuse a device from its next update on", bodies.REVOKE,
                                   "200", _body(revoked=text), 404),
        "/api/admin/training": _post("Pause or resume training", bodies.TRAINING, "202",
                                     _body(training={"type": "string",
                                                     "enum": ["running", "paused"]},
                                           note=text), 409, 501),
        "/api/admin/strategy": _post("Choose the aggregation strategy", bodies.STRATEGY,
                                     "202", _body(strategy=text, note=text), 409, 501),
        "/api/admin/stage": _post("Promote, roll back to, or pin a model version "
                                  "(docs/lifecycle.md)", bodies.STAGE, "202",
                                  _body(requested=text, version=version,
                                        request={"type": "integer"}, note=text), 404),
        "/metrics": _get("Prometheus metrics (text exposition format)",
                         {"description": "OK", "content": {"text/plain": {"schema": {
                             "type": "string"}}}}),
    }


_DEVICE_EVAL = ("Sample-weighted mean {} that the devices whose updates made this version "
                "measured on their own data before training: how the model they started "
                "from (version - 1 in sync mode) did where the data is")


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description}


def _schemas() -> dict[str, Any]:
    num = {"type": "number", "nullable": True}
    integer = {"type": "integer"}
    text = {"type": "string"}
    schemas = {
        "Error": _body(error=text),
        "Overview": {"type": "object", "properties": {
            "model_version": {"type": "integer", "nullable": True},
            "mode": {"type": "string", "nullable": True, "enum": ["sync", "async", None]},
            "rounds": integer, "versions": integer, "accuracy": num, "loss": num,
            "evaluated_version": {"type": "integer", "nullable": True},
            "update_bytes": integer, "dense_bytes_estimate": integer, "compression_ratio": num,
            "updates": {"type": "object", "additionalProperties": integer},
            "secure_contributions": _described(integer, "Device inputs summed by secure "
                                               "rounds (no update of theirs is stored)"),
            "rejections": integer, "enrolled": integer, "generated_at": {"type": "number"},
            "privacy": {"allOf": [_ref("Privacy")], "nullable": True},
            "stopped": _described({"type": "string", "nullable": True},
                                  "Why training ended before `rounds` (the privacy "
                                  "budget), or null"),
            "devices": {"type": "object", "properties": {
                "known": integer, "online": integer, "eligible": integer}}}},
        "Version": {"type": "object", "additionalProperties": True, "properties": {
            "version": integer, "created_at": {"type": "number"}, "round": integer,
            "updates": integer, "update_bytes": integer, "model_bytes": integer,
            "delta_bytes": integer, "round_wall_s": {"type": "number"},
            "max_train_s": {"type": "number"}, "mode": text,
            "devices": {"type": "array", "items": text},
            "device_count": _described(integer, "How many devices it was made from "
                                                "(?brief=true, in place of devices)"),
            "accuracy": num, "loss": num,
            "stage": _described({"type": "string", "nullable": True, "enum": [
                "candidate", "canary", "production", "rolled_back", "retired", None]},
                "The version's stage (docs/lifecycle.md)"),
            "device_accuracy": _described(num, _DEVICE_EVAL.format("accuracy")),
            "device_loss": _described(num, _DEVICE_EVAL.format("loss")),
            "fairness": _described({"type": "object"}, "The spread of the devices' own "
                                   "accuracy and their sample shares (see /api/fairness)"),
            **_dp_version_fields()}},
        "Device": {"type": "object", "properties": {
            "device_id": text, "online": {"type": "boolean", "nullable": True},
            "eligible": {"type": "boolean", "nullable": True}, "reason": text,
            "model_version": {"type": "integer", "nullable": True},
            "last_seen": num, "battery_pct": num,
            "contributions": integer, "rejections": integer,
            "last_local_accuracy": _described(
                num, "Accuracy of the model the device's latest update started from, on "
                     "the device's own data before training; null when not reported"),
            "last_local_version": _described(
                {"type": "integer", "nullable": True},
                "The model version last_local_accuracy was measured on")}},
        "Privacy": {"type": "object", "properties": {
            "mode": {"type": "string", "enum": ["off", "central", "distributed"]},
            "epsilon": _described({"type": "number"}, "Spent so far, at delta"),
            "delta": {"type": "number"}, "target_epsilon": _described(
                {"type": "number"}, "The budget; 0: none"),
            "noise_multiplier": {"type": "number"},
            "clip": {"oneOf": [{"type": "number"}, {"type": "string", "enum": ["adaptive"]}]},
            "population": integer, "cohort": integer,
            "versions": _described(integer, "Versions made with DP")}},
        "Anomalies": {"type": "object", "properties": {
            "window": integer, "threshold": integer, "clip_factor": {"type": "number"},
            "devices": {"type": "array", "items": _ref("AnomalyRow")}, **page_schema()}},
        "AnomalyRow": {"type": "object", "properties": {
            "device_id": text, "recent": _described(integer, "Outcomes in the window"),
            "rejected": integer,
            "clipped": _described(integer, "Updates in the window that were clipped and "
                                           "had a norm >= clip_factor x their version's "
                                           "median norm"),
            "clipped_total": integer, "last_rejection": {"type": "string", "nullable": True},
            "flagged": {"type": "boolean"}}},
        "AuditRow": {"type": "object", "properties": {
            "used_in": integer, "device_id": text, "task_id": text, "nonce": text,
            "num_samples": integer, "digest": text, "received_at": {"type": "number"}}},
        "Enrolment": {"type": "object", "properties": {
            "device_id": text, "public_key": text, "enrolled_at": {"type": "number"},
            "revoked_at": num}},
        "Health": _body(ok={"type": "boolean"},
                        problem={"type": "string", "nullable": True},
                        broker_connected={"type": "boolean", "nullable": True},
                        heartbeat_age_s=num,
                        model_version={"type": "integer", "nullable": True},
                        training_finished={"type": "boolean"}),
        "Status": status_schema(),
        "FairnessRow": _fairness_schema(),
        "Personal": _personal_schema(),
        "Site": site_schema(),
        "Drift": drift_schema(),
        "Lines": lines_schema(),
    }
    for name in ("Overview", "Device", "Anomalies", "AnomalyRow", "AuditRow", "Enrolment"):
        schemas[name]["required"] = list(schemas[name]["properties"])  # readmodel fills all
    schemas["Version"]["required"] = ["version", "created_at"]  # the rest is the info kept
    return schemas


def _personal_schema() -> dict[str, Any]:
    """readmodel.personal: the devices' own figures (docs/heterogeneity.md)."""
    num = {"type": "number", "nullable": True}
    by_cluster = {"type": "object", "additionalProperties": {"type": "number"}}
    device = {"type": "object", "properties": {
        "device_id": {"type": "string"}, "global_accuracy": num, "personal_accuracy": num,
        "cluster": {"type": "integer", "nullable": True}}}
    schema = {"type": "object", "properties": {
        "version": {"type": "integer", "nullable": True},
        "devices": {"type": "array", "items": device},
        "global_accuracy": _described(num, "Mean over devices: the global model (their "
                                           "cluster's) on their held-out data"),
        "personal_accuracy": _described(num, "Mean over devices: their own model"),
        "cluster_sizes": _described(by_cluster, "Cluster -> devices that chose it"),
        "cluster_accuracy": _described(by_cluster, "Cluster -> its model's accuracy on "
                                                   "the gateway's test set"),
        **page_schema()}}
    schema["required"] = list(schema["properties"])
    return schema


def _fairness_schema() -> dict[str, Any]:
    """aggregator.fairness.Fairness of one version, as readmodel.fairness serves it."""
    num = {"type": "number", "nullable": True}
    integer = {"type": "integer"}
    schema = {"type": "object", "properties": {
        "version": integer, "created_at": {"type": "number"},
        "round": {"type": "integer", "nullable": True},
        "devices": _described(integer, "Devices that reported local_accuracy (the model "
                                       "they trained from, on their own data)"),
        "median": num, "p10": _described(num, "10th percentile of the devices' accuracy"),
        "worst_decile": _described(num, "Mean accuracy of the worst tenth of the devices "
                                        "(at least one)"),
        "under_floor": _described(integer, "Devices below [fairness] accuracy_floor"),
        "floor": num,
        "contributions": _described({"type": "object", "additionalProperties": {
            "type": "number"}}, "Device -> its share of the version's samples"),
        "weights": _described({"type": "object", "additionalProperties": {
            "type": "number"}}, "Device -> its share of the aggregation weight under "
                                "[strategy] weighting (the samples share by default)"),
        "note": _described({"type": "string", "nullable": True},
                           "Why there are no figures (secure aggregation), or null"),
        "contributors": _described(integer, "Devices whose updates the version was made "
                                            "from (contributions holds ?top= of them)")}}
    schema["required"] = list(schema["properties"])
    return schema


def _dp_version_fields() -> dict[str, Any]:
    """What a version made with differential privacy adds to its info."""
    number = {"type": "number"}
    return {
        "epsilon": _described(number, "Privacy spent after this version, at dp_delta"),
        "dp_delta": number, "dp_mode": {"type": "string"},
        "dp_sampling_rate": _described(number, "q: the chance a device was in the cohort"),
        "dp_noise_multiplier": _described(number, "z as the accountant counts it"),
        "dp_clip": _described(number, "The L2 clip C used"),
        "dp_next_clip": _described(number, "C for the next version (adaptive clipping)"),
        "dp_clipped": _described({"type": "integer"}, "Updates clipped (central mode)"),
        "dp_noise_std": _described(number, "Noise std per coordinate of the mean")}


def openapi_document() -> dict[str, Any]:
    """A fresh copy each call, so a caller may change it freely."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "fedge gateway API", "version": "1",
                 "description": "Read the federation's state and manage enrolment. GET "
                                "endpoints take the read or the admin token, /api/admin/* "
                                "only the admin token, as 'Authorization: Bearer <token>'. "
                                "Errors are one JSON line, {\"error\": reason}, naming the "
                                "field or parameter; bodies are JSON objects of exactly the "
                                "fields shown, sent as application/json, at most "
                                f"{bodies.MAX_BODY_BYTES} bytes."},
        "paths": _paths(),
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
