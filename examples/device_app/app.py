"""A device app that embeds the fedge SDK.

It collects its own samples (here: a slice of the digits set standing in for sensor
readings), then joins the federation and trains whenever the aggregator asks.

    python examples/device_app/app.py --device pi-kitchen --host gateway.local
"""

from __future__ import annotations

import argparse
import logging
import zlib
from pathlib import Path

import numpy as np

from edge_client.blas_threads import limit_blas_threads
from edge_client.client import ClientConfig, EdgeClient
from edge_client.training import mlp_trainer


def local_samples(device: str) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in for a device's sensor log: replace with your own data."""
    from fedge.datasets import load_digits

    x, y = load_digits()
    rng = np.random.default_rng(zlib.crc32(device.encode()))
    keep = rng.choice(len(x), size=300, replace=False)
    return x[keep], y[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", required=True)
    parser.add_argument("--federation", default="plant-7")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--state-dir", type=Path, default=Path("fedge-state"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    limit_blas_threads(1)  # small models train much faster on one BLAS thread on a busy CPU

    x, y = local_samples(args.device)
    config = ClientConfig(device_id=args.device, federation=args.federation,
                          host=args.host, port=args.port, state_dir=args.state_dir)
    trainer = mlp_trainer([64, 1333, 10])  # the same architecture as the aggregator's
    client = EdgeClient(config, trainer, x, y)
    client.run()  # returns when the aggregator says the federation is done
    print(f"done: model version {client.model_version}, "
          f"{client.stats.acks['accepted']} updates accepted")


if __name__ == "__main__":
    main()
