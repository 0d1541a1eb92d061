"""The secure demo's gateway setup, made the way an operator would make it: a broker
config with TLS, passwords and per-device ACLs, signing keys, every device enrolled."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from aggregator.broker_config import BrokerSecurityPlan, write_broker_config
from aggregator.service import Aggregator
from edge_client.shared.security import AggregatorSecurity, BrokerAuth, DeviceSecurity
from fedge.broker import MosquittoBroker, free_port


class SecureGateway:
    def __init__(self, folder: Path, devices: int) -> None:
        self.folder = folder
        self.port = free_port()
        # mosquitto started as root drops to the `mosquitto` user, which must be able to
        # walk to its files: they get a folder of their own that it can enter (the private
        # keys inside are not world-readable).
        self.broker_folder = Path(tempfile.mkdtemp(prefix="fedge-demo-broker-"))
        self.broker_folder.chmod(0o755)
        self.files = write_broker_config(
            BrokerSecurityPlan("demo", tuple(f"device-{i}" for i in range(devices)),
                               host="127.0.0.1", port=self.port), self.broker_folder)

    def clean_up(self, keep_in: Path | None) -> None:
        """After the broker stopped: move its files (CA key included) to `keep_in`, or
        remove them, so that nothing of the demo's security stays in /tmp."""
        if keep_in is not None:
            shutil.rmtree(keep_in, ignore_errors=True)
            shutil.move(str(self.broker_folder), str(keep_in))
        else:
            shutil.rmtree(self.broker_folder, ignore_errors=True)

    def start_broker(self) -> MosquittoBroker:
        return MosquittoBroker.start_with_conf(self.files.conf, self.port)

    def _auth(self, user: str) -> BrokerAuth:
        password = self.broker_folder / "credentials" / f"{user}.txt"
        return BrokerAuth(ca_file=self.files.ca_cert, username=user, password_file=password)

    def aggregator(self) -> tuple[AggregatorSecurity, BrokerAuth]:
        key = self.folder / "aggregator.key"
        return AggregatorSecurity(enabled=True, key_file=key), self._auth("aggregator")

    def device(self, index: int, aggregator: Aggregator) -> tuple[DeviceSecurity, BrokerAuth]:
        assert aggregator.identity is not None
        security = DeviceSecurity(key_file=self.folder / f"device-{index}.key",
                                  aggregator_key=aggregator.identity.public_text)
        return security, self._auth(f"device-{index}")
