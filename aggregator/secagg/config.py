"""The [secagg] table: secure aggregation of sync rounds (docs/secure-aggregation.md).

Each key is checked on its own here, and against the rest of the aggregator's config in
`check_secagg`: under secure aggregation the server sees only the sum of the round's
updates, so whatever needs individual updates (robust strategies, central DP, per-device
top-k coordinates, async buffers that mix versions) is refused at start-up with the keys
named, rather than quietly doing something else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregator.strategy.registry import MEAN_BASED, STRATEGIES
from edge_client.shared.secagg.fixed_point import WORD_BITS, FixedPoint, bits_for
from edge_client.shared.secagg.graph import MIN_PARTICIPANTS
from edge_client.shared.secagg.prg import MAX_BITS, MIN_BITS
from edge_client.shared.settings import ConfigError

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig

GRAPHS = ("complete", "sparse")
SPARSIFY = ("none", "randk")


@dataclass
class SecAggConfig:
    enabled: bool = False
    clip: float = 1.0  # each coordinate of a device's delta is clipped to [-clip, clip]
    value_bits: int = 16  # signed integer levels per device: scale = (2**(v-1) - 1) / clip
    bits: int = 0  # modulus bits of the masked sum; 0: the smallest word that holds it
    graph: str = "sparse"  # "sparse" (SecAgg+, log n neighbours) or "complete" (SecAgg)
    phase_timeout_s: float = 30.0  # deadline of each phase after keys are advertised
    sparsify: str = "none"  # "none" or "randk": coordinates shared by the whole round
    fraction: float = 0.1  # randk: share of the coordinates each round masks and sends

    def __post_init__(self) -> None:
        if not (_number(self.clip) and self.clip > 0):
            raise ValueError(f"secagg.clip must be a finite number > 0, not {self.clip!r}")
        if not 2 <= self.value_bits <= 32:
            raise ValueError(f"secagg.value_bits must be in [2, 32], not {self.value_bits}")
        if self.bits != 0 and not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"secagg.bits must be 0 (automatic) or in [{MIN_BITS}, "
                             f"{MAX_BITS}], not {self.bits}")
        if self.graph not in GRAPHS:
            raise ValueError(f"secagg.graph must be one of {GRAPHS}, not {self.graph!r}")
        if not (_number(self.phase_timeout_s) and self.phase_timeout_s > 0):
            raise ValueError(f"secagg.phase_timeout_s must be > 0, not {self.phase_timeout_s}")
        if self.sparsify not in SPARSIFY:
            raise ValueError(f"secagg.sparsify must be one of {SPARSIFY} (top-k would pick "
                             f"different coordinates per device), not {self.sparsify!r}")
        if not (_number(self.fraction) and 0 < self.fraction <= 1):
            raise ValueError(f"secagg.fraction must be in (0, 1], not {self.fraction}")

    @property
    def scale(self) -> float:
        return ((1 << (self.value_bits - 1)) - 1) / self.clip

    def modulus_bits(self, max_devices: int) -> int:
        """`bits`, or the smallest word (8, 16, 32, 64) that holds a sum of `max_devices`."""
        if self.bits:
            return self.bits
        need = bits_for(max_devices, math.floor(self.clip * self.scale))
        return next((w for w in WORD_BITS if w >= need), need)

    def fixed_point(self, max_devices: int) -> FixedPoint:
        """The encoding of a round with up to `max_devices` inputs; ValueError if it wraps."""
        return FixedPoint(clip=self.clip, scale=self.scale,
                          bits=self.modulus_bits(max_devices), max_devices=max_devices)


def max_invited(config: AggregatorConfig) -> int:
    """The most devices a sync round invites: the target plus over-selection."""
    return math.ceil(config.sync.target_updates * (1 + config.sync.over_selection))


def min_contributors(config: AggregatorConfig) -> int:
    """The fewest devices whose inputs make a version: the sync minimum, as without
    secure aggregation (and what the distributed-DP budget check assumes)."""
    return max(1, math.ceil(config.sync.min_fraction * config.sync.target_updates))


def check_secagg(config: AggregatorConfig) -> None:
    """Refuse [secagg] settings that the rest of the config would break."""
    s = config.secagg
    if not s.enabled:
        return
    if config.mode != "sync":
        raise ConfigError("secagg.enabled = true needs mode = 'sync': secure aggregation "
                          "sums the inputs of one round's participants, and async buffers "
                          "have no rounds")
    # The mean-based strategies take the mean delta and nothing else; the robust rules
    # need each update, which stays masked.
    if not STRATEGIES[config.strategy.name].mean_based:
        raise ConfigError(f"secagg.enabled = true needs strategy.name to be one of "
                          f"{MEAN_BASED}, not {config.strategy.name!r}: the aggregator "
                          "sees only the sum of the updates, and robust rules need each one")
    if config.privacy.mode == "central":
        raise ConfigError("secagg.enabled = true does not work with privacy.mode = "
                          "'central', which clips each update at the aggregator; use "
                          "privacy.mode = 'distributed' (devices clip and add noise)")
    uplink = config.uplink
    if uplink is not None and uplink.sparsify in ("topk", "threshold"):
        raise ConfigError(f"secagg.enabled = true does not work with uplink.sparsify = "
                          f"{uplink.sparsify!r}: masks cancel only when every device sends "
                          "the same coordinates; use secagg.sparsify = 'randk'")
    if uplink is not None:
        raise ConfigError("secagg.enabled = true replaces [uplink]: devices send fixed-point "
                          "integers (secagg.value_bits) and shared random-k coordinates "
                          "(secagg.sparsify); leave the [uplink] table out")
    if min_contributors(config) < MIN_PARTICIPANTS:
        raise ConfigError(f"secagg.enabled = true needs rounds of at least {MIN_PARTICIPANTS} "
                          f"devices: raise sync.target_updates or sync.min_fraction (now "
                          f"ceil({config.sync.min_fraction} * {config.sync.target_updates}) "
                          f"= {min_contributors(config)})")
    try:
        s.fixed_point(max_invited(config))
    except ValueError as exc:
        raise ConfigError(f"secagg.clip, secagg.value_bits and secagg.bits: {exc}") from None
    if config.privacy.mode == "distributed" and not isinstance(config.privacy.clip, str) \
            and s.clip < float(config.privacy.clip):
        raise ConfigError(f"secagg.clip ({s.clip:g}) must be at least privacy.clip "
                          f"({float(config.privacy.clip):g}): a coordinate of an update "
                          "clipped to L2 norm C can be as large as C, and clipping it again "
                          "would change the noise the accountant counts on")


def _number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
