"""The device's held-out data: one notion for everything that measures a model on data
it should not have learnt from.

A canary device compares a candidate with production on it (docs/lifecycle.md), and a
personalised or clustered device measures the global model against its own on it
(docs/heterogeneity.md). An app can hand its own (`EdgeClient(..., holdout=(x, y))`,
`[data] holdout` in the device TOML); otherwise the device takes HOLDOUT_FRACTION of its
data, chosen by a seed of its id. Memory-mapped data (larger than memory, perhaps) takes
its last rows instead, as views, so nothing is copied into memory: for a log in time
order, the newest data. A personalised or clustered device then trains on the rest; a
plain federation trains on everything, as before (its canary comparison is fair between
the two models but optimistic for both).
"""

from __future__ import annotations

import zlib

import numpy as np

from edge_client.local_data import is_mapped

HOLDOUT_FRACTION = 0.2

Data = tuple[np.ndarray, np.ndarray]


def split_holdout(data: Data, device_id: str) -> tuple[Data, Data]:
    """(train, held out); a device with fewer than 5 samples measures on its training
    data (nothing to spare)."""
    x, y = data
    n = len(x)
    held = int(n * HOLDOUT_FRACTION)
    if held < 1 or n - held < 1 or n < 5:
        return data, data
    if is_mapped(x) or is_mapped(y):  # views of the file, never a copy
        return (x[:n - held], y[:n - held]), (x[n - held:], y[n - held:])
    # numpy.random, loaded here only by a canary or personalised device (a plain one
    # never splits its data): the split each device has always made stays the same.
    order = np.random.default_rng(zlib.crc32(device_id.encode())).permutation(n)
    keep, out = np.sort(order[held:]), np.sort(order[:held])
    return (x[keep], y[keep]), (x[out], y[out])


def held_out(data: Data, device_id: str, given: Data | None = None) -> Data:
    """The data a device measures models on: the app's `given`, else the default fifth."""
    return given if given is not None else split_holdout(data, device_id)[1]
