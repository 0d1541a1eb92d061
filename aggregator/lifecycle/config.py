"""[rollout]: staged rollout with canaries (docs/lifecycle.md, docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RolloutConfig:
    """Off by default (canary_fraction 0): every new version goes to production at once,
    as before stages existed."""

    canary_fraction: float = 0.0  # of the available devices; 0: no canaries
    min_canary_reports: int = 3  # reports needed before a decision
    margin: float = 0.02  # accuracy the candidate may lose, overall and on the worst decile
    canary_timeout_s: float = 300.0  # no decision by then (too few reports): roll back

    def __post_init__(self) -> None:
        if not (isinstance(self.canary_fraction, int | float)
                and 0.0 <= self.canary_fraction <= 1.0):
            raise ValueError(f"rollout.canary_fraction must be a number from 0 to 1, not "
                             f"{self.canary_fraction!r}")
        if not (isinstance(self.min_canary_reports, int) and self.min_canary_reports >= 1):
            raise ValueError(f"rollout.min_canary_reports must be a whole number >= 1, not "
                             f"{self.min_canary_reports!r}")
        if not (isinstance(self.margin, int | float) and 0.0 <= self.margin <= 1.0):
            raise ValueError(f"rollout.margin must be a number from 0 to 1, not "
                             f"{self.margin!r}")
        if not (isinstance(self.canary_timeout_s, int | float) and self.canary_timeout_s > 0):
            raise ValueError(f"rollout.canary_timeout_s must be > 0, not "
                             f"{self.canary_timeout_s!r}")

    @property
    def enabled(self) -> bool:
        return self.canary_fraction > 0


def canary_privacy_caution(rollout: RolloutConfig, dp: bool, secagg: bool) -> str | None:
    """What to tell an operator whose canaries would report outside [privacy]/[secagg].

    Canary reports are per-device figures sent signed but in the clear, with no noise and
    no masking (docs/lifecycle.md, "What canary metrics reveal"): allowed, but said at
    start so that nobody reads the privacy settings as covering them."""
    if not rollout.enabled or not (dp or secagg):
        return None
    covered = " and ".join(name for name, on in (("[privacy]", dp), ("[secagg]", secagg)) if on)
    return (f"[rollout] canary_fraction = {rollout.canary_fraction}: canary reports (each "
            f"device's accuracy on its held-out examples) are sent in the clear, outside "
            f"{covered}; set canary_fraction = 0 if that is too much "
            "(docs/lifecycle.md#what-canary-metrics-reveal)")
