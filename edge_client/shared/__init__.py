"""The layer both sides speak: what a device and the aggregator share, and nothing else.

protocol (messages, topics, chunking, signing, bounds), codecs (compression and the
device's DP clipping), secagg (the messages and the client's half of secure aggregation),
transport (the paho shell), settings (TOML into dataclasses), security and identity.
The aggregator reaches into edge_client only through here (tests/unit/test_import_contract.py
enforces it); modules here import nothing from the device loop, its trainers or probes.
"""
