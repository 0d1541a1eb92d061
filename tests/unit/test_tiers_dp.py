"""Central DP at the top tier with sites below (docs/tiers.md, docs/privacy.md), through
the sans-IO cores: the top clips each site's whole aggregate to C as one participant,
averages them unweighted over the expected cohort of sites, adds N(0, (z C / m)^2), and
its accountant counts one step per top version, with q = sites invited / sites
available. The sites adopt the noised model like any other."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.core import AdoptModel, SiteAggregate, UpperAsks, VersionMade
from aggregator.privacy import PrivacyConfig, Step, epsilon
from aggregator.upper_config import UpperConfig
from tests.unit.scripted_clock import ScriptedClock as Clock
from tests.unit.test_tiers_core import WEIGHTS, Tier, _task, _update

CLIP, Z = 0.5, 1.0
RNG = np.random.default_rng(11)


def _norm(delta: dict) -> float:
    return float(np.sqrt(sum(np.sum(np.square(v.astype(np.float64))) for v in delta.values())))


def test_central_dp_at_the_top_clips_and_noises_each_site_as_one_participant(tmp_path):
    clock = Clock()
    privacy = PrivacyConfig(mode="central", clip=CLIP, noise_multiplier=Z, seed=5)
    top = Tier(tmp_path, "top", clock, ["site-a", "site-b"], privacy=privacy)
    top.connect()
    top_task = _task(top.tick())
    names = ("site-a", "site-b")
    sites = {name: Tier(tmp_path, name, clock, [f"{name}-d0", f"{name}-d1"],
                        UpperConfig(enabled=True, site_id=name, federation="top"))
             for name in names}
    sent: dict[str, tuple[dict, int]] = {}
    for s, (name, site) in enumerate(sites.items()):
        site.connect()
        site.send(AdoptModel(WEIGHTS, 0, clock.at()))
        site.send(UpperAsks(0, clock.at()))
        task = _task(site.tick())
        for device in site.devices:  # site-b's devices move twice as far
            delta = {k: (1 + s) * RNG.normal(size=v.shape).astype(np.float32)
                     for k, v in WEIGHTS.items()}
            assert [a.status for a in site.upload(_update(device, task, delta, 10 + 90 * s))
                    ] == ["accepted"]
        [aggregate] = [a for a in site.tick() if isinstance(a, SiteAggregate)]
        up = {k: aggregate.weights[k] - WEIGHTS[k] for k in WEIGHTS}
        sent[name] = (up, aggregate.samples)
        assert [a.status for a in top.upload(_update(name, top_task, up, aggregate.samples))
                ] == ["accepted"]
    assert all(_norm(up) > CLIP for up, _ in sent.values())  # each site is clipped whole
    made = [a for a in top.tick() if isinstance(a, VersionMade)]
    assert top.core.state.version == 1 and made
    info = top.store.model_history()[-1].info()
    assert info["dp_mode"] == "central" and info["dp_clipped"] == 2
    assert info["dp_sampling_rate"] == pytest.approx(1.0)  # both sites invited, of 2
    assert info["dp_noise_std"] == pytest.approx(Z * CLIP / 2)
    assert info["epsilon"] == pytest.approx(epsilon([Step(1.0, Z)], info["dp_delta"]))
    # the clipped mean, unweighted (site-b's 9x samples count for nothing), plus noise
    clipped_mean = {k: sum(up[k].astype(np.float64) * min(1.0, CLIP / _norm(up))
                           for up, _ in sent.values()) / 2 for k in WEIGHTS}
    noise = np.concatenate([(top.core.state.weights[k] - WEIGHTS[k] - clipped_mean[k]).ravel()
                            for k in WEIGHTS])
    assert 0.3 * info["dp_noise_std"] < float(np.std(noise)) < 3 * info["dp_noise_std"]
    weighted = {k: sum(n * up[k] for up, n in sent.values()) / sum(n for _, n in sent.values())
                for k in WEIGHTS}
    assert not all(np.allclose(top.core.state.weights[k], WEIGHTS[k] + weighted[k])
                   for k in WEIGHTS)  # not the plain FedAvg of the site aggregates
    for site in sites.values():  # the noised model goes down as the sites' next version
        site.send(AdoptModel(dict(top.core.state.weights), 1, clock.at()))
        assert site.core.state.version == 3
        for k in WEIGHTS:
            np.testing.assert_array_equal(site.core.state.weights[k], top.core.state.weights[k])
