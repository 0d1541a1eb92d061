"""Model lines at the aggregator (issue 18, "Models that change shape"): a changed
architecture kept or rolled out as a new line, and /api/lines."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, load_aggregator_config
from aggregator.core.models import load_or_create
from aggregator.model_lines import LinesConfig, line_of, lines_view, version_lines
from aggregator.store import Store
from aggregator.web import create_app
from aggregator.web.openapi import openapi_document
from edge_client.shared.protocol import Model, Status, decode
from edge_client.shared.settings import ConfigError
from edge_client.training import mlp_trainer

OLD = {"kind": "mlp", "sizes": [8, 6, 3]}
NEW = {"kind": "mlp", "sizes": [8, 12, 3]}


def _config(tmp_path, on_arch_change: str = "keep") -> AggregatorConfig:
    return AggregatorConfig(db_path=tmp_path / "agg.sqlite3",
                            lines=LinesConfig(on_arch_change=on_arch_change))


def _weights(arch: dict) -> dict[str, np.ndarray]:
    return mlp_trainer(arch["sizes"]).get_weights()


def test_line_names():
    assert line_of(OLD) == line_of(dict(reversed(list(OLD.items()))))  # order-free
    assert line_of(OLD) != line_of(NEW) and line_of(OLD).startswith("mlp-")


def test_a_changed_architecture_is_kept_unless_a_new_line_is_asked_for(tmp_path, caplog):
    caplog.set_level(logging.INFO, "aggregator.service")
    store = Store(tmp_path / "agg.sqlite3")
    assert load_or_create(_config(tmp_path), store, _weights(OLD), OLD)[0] == 0
    version, weights, arch = load_or_create(_config(tmp_path), store, _weights(NEW), NEW)
    assert (version, arch) == (0, OLD) and weights["dense0.weight"].shape == (8, 6)
    assert "serving the stored line" in caplog.text
    version, weights, arch = load_or_create(_config(tmp_path, "new_line"), store,
                                            _weights(NEW), NEW)
    assert (version, arch) == (1, NEW) and weights["dense0.weight"].shape == (8, 12)
    assert f"starting model line {line_of(NEW)} at version 1" in caplog.text
    stored = decode(store.latest_model().blob, expect=Model)
    assert stored.version == 1 and stored.arch == NEW
    assert store.model_delta(1) is None  # sent whole: no delta from another shape
    assert version_lines(store) == {0: line_of(OLD), 1: line_of(NEW)}
    again = load_or_create(_config(tmp_path, "new_line"), store, _weights(NEW), NEW)
    assert again[0] == 1  # the same architecture: resumed, no third line


def test_api_lines_says_who_is_on_which_line_and_who_refused(tmp_path):
    store = Store(tmp_path / "agg.sqlite3")
    load_or_create(_config(tmp_path), store, _weights(OLD), OLD)
    load_or_create(_config(tmp_path, "new_line"), store, _weights(NEW), NEW)
    store.set_devices([
        (Status("d0", True, model_version=1), 1.0),
        (Status("d1", True, eligible=False, model_version=0,
                reason="model refused: version 1: it is 900 bytes, over max_model_bytes "
                       "500; serving version 0"), 1.0),
        (Status("d2", True), 1.0)])
    view = lines_view(store)
    store.close()
    assert [(r["line"], r["first_version"], r["last_version"], r["devices"])
            for r in view["lines"]] == [(line_of(NEW), 1, 1, ["d0"]),
                                        (line_of(OLD), 0, 0, ["d1"])]
    devices = {d["device_id"]: d for d in view["devices"]}
    assert devices["d1"]["refused"].startswith("model refused: version 1")
    assert devices["d0"]["refused"] is None and devices["d2"]["line"] is None
    client = create_app(tmp_path / "agg.sqlite3", None, None).test_client()
    body = client.get("/api/lines").get_json()
    assert body == {**view, "total": 3, "limit": 500, "offset": 0}
    assert [r["device_count"] for r in body["lines"]] == [1, 1]
    schema = openapi_document()["components"]["schemas"]["Lines"]
    assert set(body["devices"][0]) == set(
        schema["properties"]["devices"]["items"]["required"])
    assert set(body["lines"][0]) == set(schema["properties"]["lines"]["items"]["required"])


def test_the_lines_key_is_checked():
    with pytest.raises(ConfigError, match="on_arch_change must be 'keep' or 'new_line'"):
        load_aggregator_config({"lines": {"on_arch_change": "replace"}})
