"""Differential privacy for the aggregator: clipping, DP-FedAvg, the accountant and the
budget, configured in the [privacy] table (docs/privacy.md)."""

from aggregator.privacy.accountant import Accountant, Step, dp_event, epsilon
from aggregator.privacy.clipping import Clipped, l2_clip, next_clip
from aggregator.privacy.config import (
    MODES,
    PRIVATE_STRATEGIES,
    PrivacyConfig,
    check_privacy,
    expected_cohort,
)
from aggregator.privacy.dp_strategy import CentralDp, DistributedDp, DpRound, DpState

__all__ = ["MODES", "PRIVATE_STRATEGIES", "Accountant", "CentralDp", "Clipped",
           "DistributedDp", "DpRound", "DpState", "PrivacyConfig", "Step", "check_privacy",
           "dp_event", "epsilon", "expected_cohort", "l2_clip", "next_clip"]
