"""Secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020), sans-IO.

The server learns the sum of the devices' integer vectors mod 2**bits and nothing else
about any one of them, even when some devices drop out. Both ends are state machines
that take and return messages (`messages`) and never touch the network; the transport
relays them. Used by devices and by the aggregator, so it depends on numpy, msgpack,
`cryptography` (imported when a secure round uses it) and (lazily, for Shamir sharing)
pycryptodome only.
The server (`SecAggServer`, `SecAggResult`, `Dropout`) is imported from
`aggregator.secagg.server` and not from here, so a device never loads it.
See docs/secure-aggregation.md.
"""

from edge_client.shared.secagg.client import SecAggClient
from edge_client.shared.secagg.coordinates import gather, scatter, shared_coordinates
from edge_client.shared.secagg.errors import BadSecAggMessage, RoundAborted
from edge_client.shared.secagg.fixed_point import FixedPoint
from edge_client.shared.secagg.graph import (
    GraphParams,
    neighbour_graph,
    sparse_degree,
    threshold_for,
)
from edge_client.shared.secagg.messages import decode_message
from edge_client.shared.secagg.phases import Phase

__all__ = [
    "BadSecAggMessage",
    "FixedPoint",
    "GraphParams",
    "Phase",
    "RoundAborted",
    "SecAggClient",
    "decode_message",
    "gather",
    "neighbour_graph",
    "scatter",
    "shared_coordinates",
    "sparse_degree",
    "threshold_for",
]
