"""The gateway's half of secure aggregation: the SecAgg server, its settings and its store.

The client's half and the messages both halves speak live in edge_client.shared.secagg.
"""
