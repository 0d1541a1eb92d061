"""Build and run a whole federation in one process (docs/federation.md).

    with Federation(broker="mosquitto") as federation:
        federation.add_aggregator(AggregatorConfig(federation="lab", rounds=5), weights, arch)
        for i, (x, y) in enumerate(shards):
            federation.add_device(ClientConfig(device_id=f"d{i}", federation="lab"),
                                  trainer(i), x, y)
        result = federation.run(timeout_s=300)
    print(result.final_accuracy, result.bytes_up, result.bytes_down)
"""

from fedge.federation.builder import Federation
from fedge.federation.parties import PartyFailed, PartyThread
from fedge.federation.result import FederationResult

__all__ = ["Federation", "FederationResult", "PartyFailed", "PartyThread"]
