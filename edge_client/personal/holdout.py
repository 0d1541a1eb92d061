"""The device's held-out data: where it measures the global model against its own.

An app can hand its own (EdgeClient(..., holdout=(x, y))); otherwise a personalised or
clustered device keeps back HOLDOUT_FRACTION of its data, chosen by a seed of its id,
and trains on the rest. Memory-mapped data (larger than memory, perhaps) keeps back its
last rows instead, as views, so nothing is copied into memory: for a log in time order,
the newest data. A plain federation trains on everything, as before.
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
    order = np.random.default_rng(zlib.crc32(device_id.encode())).permutation(n)
    keep, out = np.sort(order[held:]), np.sort(order[:held])
    return (x[keep], y[keep]), (x[out], y[out])
