"""Loss functions returning the loss and its gradient together, as backward needs both."""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against int labels, and d(loss)/d(logits).

    Subtracting the row max before exp keeps it stable for large logits.
    """
    n, num_classes = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        low, high = labels.min(), labels.max()
        raise ValueError(f"labels must be in [0, {num_classes}), got values in [{low}, {high}]")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    loss = -log_probs[rows, labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[rows, labels] -= 1
    dlogits /= n
    return float(loss), dlogits
