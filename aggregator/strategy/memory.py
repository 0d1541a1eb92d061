"""How much memory a strategy that needs every update takes for one version, and the
start-up check that refuses a cohort that would not fit under `[strategy]
memory_limit_mb` (docs/strategies.md, "Memory").

Mean-based strategies fold each update into one running sum (folding.py) and need no
check: their memory is O(model) whatever the cohort.
"""

from __future__ import annotations

from aggregator.strategy.config import StrategyConfig

# Per update and parameter, for median, trimmed mean, Krum and norm bounding: the held
# float32 row (4), its float64 copy in the (n, d) matrix (8) and the rule's own (n, d)
# float64 temporary (the median's partition, the trimmed mean's sort, the clipped rows).
BYTES_PER_VALUE = 20


def needs_all_mb(updates: int, parameters: int) -> float:
    """Megabytes a needs-all strategy takes for one version of `updates` updates."""
    return BYTES_PER_VALUE * updates * parameters / 2**20


def check_cohort_fits(config: StrategyConfig, name: str, updates: int,
                      parameters: int) -> None:
    """ValueError (one line, naming the key and the limit) if `updates` of a model of
    `parameters` would not fit for strategy `name`, one that needs every update."""
    need = needs_all_mb(updates, parameters)
    if need > config.memory_limit_mb:
        raise ValueError(
            f"[strategy] memory_limit_mb = {config.memory_limit_mb:g}: {name} keeps every "
            f"update of a version in memory, and {updates} updates of {parameters:,} "
            f"parameters need about {need:,.0f} MB; raise memory_limit_mb, make versions "
            f"smaller, or use a mean-based strategy (fedavg, fedadam, ...), which needs "
            f"O(model) memory whatever the cohort")
