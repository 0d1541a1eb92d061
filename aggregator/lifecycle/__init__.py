"""A model's life on the fleet: stages, canary evaluation, promotion and rollback
(docs/lifecycle.md). The core's part is `Lifecycle` (rollout.py); the rule is a plain
function (rule.py); the store's tables are in store_stages.py."""

from aggregator.lifecycle.config import RolloutConfig
from aggregator.lifecycle.stages import Command, Stage, StageChange, StageRequest

__all__ = ["Command", "RolloutConfig", "Stage", "StageChange", "StageRequest"]
