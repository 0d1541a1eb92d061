"""The [privacy] and [anomalies] tables: defaults, good files, and every malformed case
failing with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import load_aggregator_config
from aggregator.privacy import PrivacyConfig, expected_cohort
from edge_client.shared.settings import ConfigError, read_toml


def _load(privacy: dict, **top) -> object:
    return load_aggregator_config({"privacy": privacy, **top}, "agg.toml")


def test_defaults_are_off_and_sane():
    config = load_aggregator_config({})
    assert config.privacy == PrivacyConfig() and not config.privacy.enabled
    assert config.privacy.resolved_delta() == 1e-5
    assert config.anomalies.window == 10 and config.anomalies.threshold == 3


def test_a_full_central_table_loads(tmp_path):
    path = tmp_path / "agg.toml"
    path.write_text('[privacy]\nmode = "central"\nclip = "adaptive"\ninitial_clip = 0.5\n'
                    'target_quantile = 0.7\nclip_lr = 0.1\nclip_count_stddev = 2\n'
                    'noise_multiplier = 1.1\ndelta = 1e-6\ntarget_epsilon = 8\n'
                    'population = 200\nseed = 3\n\n[sync]\ntarget_updates = 20\n'
                    '\n[anomalies]\nwindow = 5\nthreshold = 2\nclip_factor = 1.5\n')
    config = load_aggregator_config(read_toml(path), str(path))
    p = config.privacy
    assert (p.mode, p.clip, p.initial_clip, p.start_clip) == ("central", "adaptive", 0.5, 0.5)
    assert p.clip_count_stddev == 2.0 and isinstance(p.clip_count_stddev, float)
    assert (p.target_epsilon, p.population, p.seed, p.resolved_delta()) == (8.0, 200, 3, 1e-6)
    assert expected_cohort(config) == 20
    assert (config.anomalies.window, config.anomalies.clip_factor) == (5, 1.5)


def test_fixed_clip_integer_and_delta_from_population():
    p = _load({"mode": "central", "clip": 2, "population": 1000}).privacy
    assert p.start_clip == 2.0 and not p.adaptive
    assert p.resolved_delta() == 1e-5  # min(1e-5, 1 / 1000)
    assert PrivacyConfig(population=1_000_000).resolved_delta() == pytest.approx(1e-6)
    assert PrivacyConfig(population=1_000_000, delta=1e-3).resolved_delta() == 1e-3


def test_distributed_sync_with_dense_uplink_loads():
    config = _load({"mode": "distributed", "clip": 0.5},
                   uplink={"sparsify": "none", "quantize": "f32"})
    assert config.privacy.mode == "distributed"


@pytest.mark.parametrize(("privacy", "top", "message"), [
    ({"mode": "local"}, {}, "privacy.mode must be one of"),
    ({"mod": "central"}, {}, "unknown key 'mod' in agg.toml [privacy]"),
    ({"clip": "auto"}, {}, "privacy.clip must be a number > 0 or 'adaptive'"),
    ({"clip": -1.0}, {}, "privacy.clip must be a finite number > 0"),
    ({"clip": 0}, {}, "privacy.clip must be a finite number > 0"),
    ({"clip": True}, {}, "[privacy] clip must be float or str, got bool"),
    ({"clip": [1.0]}, {}, "[privacy] clip must be float or str, got list"),
    ({"initial_clip": 0.0}, {}, "privacy.initial_clip must be a finite number > 0"),
    ({"clip_lr": -0.2}, {}, "privacy.clip_lr"),
    ({"noise_multiplier": 0}, {}, "privacy.noise_multiplier must be a finite number > 0"),
    ({"noise_multiplier": "1"}, {}, "[privacy] noise_multiplier must be float, got str"),
    ({"target_quantile": 1.0}, {}, "privacy.target_quantile must be in (0, 1)"),
    ({"clip_count_stddev": 0.0}, {}, "privacy.clip_count_stddev must be a finite number > 0"),
    ({"delta": 0.0}, {}, "privacy.delta must be in (0, 1)"),
    ({"delta": 1.5}, {}, "privacy.delta must be in (0, 1)"),
    ({"target_epsilon": -1.0}, {}, "privacy.target_epsilon must be a finite number >= 0"),
    ({"target_epsilon": float("inf")}, {}, "privacy.target_epsilon"),
    ({"population": -5}, {}, "privacy.population must be >= 0"),
    ({"population": 1.5}, {}, "[privacy] population must be int, got float"),
    ({"seed": -1}, {}, "privacy.seed must be >= 0"),
    ({"mode": "central"}, {"strategy": {"name": "median"}},
     "privacy.mode = 'central' needs strategy.name to be one of"),
    ({"mode": "central"}, {"strategy": {"name": "krum"}, "sync": {"target_updates": 5}},
     "needs strategy.name"),
    ({"mode": "distributed"}, {"strategy": {"name": "norm_bound"}}, "needs strategy.name"),
    ({"mode": "distributed"}, {"mode": "async"}, "privacy.mode = 'distributed' needs mode = "
                                                 "'sync'"),
    ({"mode": "distributed", "clip": "adaptive", "clip_count_stddev": 10.0}, {},
     "privacy.clip = 'adaptive' works with mode = 'central' only"),
    ({"mode": "distributed"}, {"uplink": {"sparsify": "topk"}}, "needs dense float32 updates"),
    ({"mode": "distributed"}, {"uplink": {"quantize": "q8"}}, "needs dense float32 updates"),
    ({"mode": "central", "clip": "adaptive"}, {},
     "privacy.clip_count_stddev: adaptive clipping with noise_multiplier 1.0 needs"),
])
def test_malformed_privacy_tables_name_the_key(privacy, top, message):
    with pytest.raises(ConfigError) as info:
        _load(privacy, **top)
    assert message in str(info.value)


def test_privacy_must_be_a_table():
    with pytest.raises(ConfigError, match=r"privacy.*must be a table"):
        load_aggregator_config({"privacy": "central"}, "agg.toml")


@pytest.mark.parametrize(("table", "message"), [
    ({"window": 0}, "anomalies.window must be >= 1"),
    ({"threshold": 0}, "anomalies.threshold must be in [1, window = 10]"),
    ({"threshold": 11}, "anomalies.threshold must be in [1, window = 10]"),
    ({"clip_factor": -0.5}, "anomalies.clip_factor must be a finite number >= 0"),
    ({"windows": 3}, "unknown key 'windows' in agg.toml [anomalies]"),
])
def test_malformed_anomalies_tables_name_the_key(table, message):
    with pytest.raises(ConfigError) as info:
        load_aggregator_config({"anomalies": table}, "agg.toml")
    assert message in str(info.value)


def test_adaptive_clipping_needs_a_count_noise_above_half_the_multiplier():
    """z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2 exists only for 2 sigma_b > z; the default
    sigma_b = m / 20 allows z < 1 with 10 devices."""
    ok = _load({"mode": "central", "clip": "adaptive", "noise_multiplier": 0.9},
               sync={"target_updates": 10})
    z_delta = ok.privacy.update_noise_multiplier(10)
    assert z_delta == pytest.approx((0.9 ** -2 - 1.0) ** -0.5) and z_delta > 0.9
    with pytest.raises(ConfigError, match="clip_count_stddev"):
        _load({"mode": "central", "clip": "adaptive", "noise_multiplier": 1.0},
              sync={"target_updates": 10})


def test_the_example_gateway_config_documents_the_tables():
    """Commented out there: the example still loads with privacy off."""
    path = Path(__file__).resolve().parents[2] / "examples" / "gateway" / "aggregator.toml"
    assert "# [privacy]" in path.read_text() and "\n[anomalies]" in path.read_text()
    table = {k: v for k, v in read_toml(path).items() if k not in ("model", "evaluation")}
    assert load_aggregator_config(table, str(path)).privacy.mode == "off"
