"""Reasons as counted: a device's status says why it may not train ('battery 18% < 20%;
cpu busy 55% > 30%'); devices, the demo and `fedge status` count them by kind."""

from __future__ import annotations

import re


def reason_kind(reason: str) -> str:
    """'battery 18% < 20%' -> 'battery': the first reason without its readings."""
    prefix, _, rest = reason.partition("stopped: ")
    kind = re.split(r"[:(\d;]", rest or prefix)[0].strip()
    return f"stopped: {kind}" if rest else kind
