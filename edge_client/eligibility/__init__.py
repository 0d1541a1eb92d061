"""Train only when the device is idle, charging and on an unmetered network.

Standard library only: this runs on the device, and a Pi Zero must import it fast.
See docs/eligibility.md.
"""

from edge_client.eligibility.idle import CpuIdleProbe
from edge_client.eligibility.network import NetworkProbe, nm_metered_via_nmcli
from edge_client.eligibility.policy import (
    Decision,
    EligibilityConfig,
    EligibilityPolicy,
    run_probe,
    standard_probes,
)
from edge_client.eligibility.power import PowerProbe
from edge_client.eligibility.probe import Probe, ProbeResult
from edge_client.eligibility.schedule import TimeWindowProbe
from edge_client.eligibility.thermal import ThermalProbe

__all__ = [
    "CpuIdleProbe",
    "Decision",
    "EligibilityConfig",
    "EligibilityPolicy",
    "NetworkProbe",
    "PowerProbe",
    "Probe",
    "ProbeResult",
    "ThermalProbe",
    "TimeWindowProbe",
    "nm_metered_via_nmcli",
    "run_probe",
    "standard_probes",
]
