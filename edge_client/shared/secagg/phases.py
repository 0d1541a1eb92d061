"""The phases of a round, in order; a dropout is recorded with the phase it missed."""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    ADVERTISE_KEYS = "advertise_keys"  # devices send their public keys
    SHARE_KEYS = "share_keys"  # devices send encrypted shares of their secrets
    MASKED_INPUT = "masked_input"  # devices send masked vectors
    UNMASKING = "unmasking"  # devices send the shares that remove the masks
    DONE = "done"
    ABORTED = "aborted"
