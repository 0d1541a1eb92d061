"""Local training for edge devices: a Trainer protocol and a numpy MLP implementation."""

from edge_client.training.layers import Dense, Layer, ReLU
from edge_client.training.losses import softmax_cross_entropy
from edge_client.training.numpy_trainer import NumpyTrainer, Sequential, mlp, mlp_trainer
from edge_client.training.optim import SGD
from edge_client.training.trainer import FitConfig, FitResult, Trainer
from edge_client.training.weights import (
    Weights,
    WeightSpec,
    check_weights_match,
    flatten_weights,
    unflatten_weights,
)

__all__ = [
    "SGD",
    "Dense",
    "FitConfig",
    "FitResult",
    "Layer",
    "NumpyTrainer",
    "ReLU",
    "Sequential",
    "Trainer",
    "WeightSpec",
    "Weights",
    "check_weights_match",
    "flatten_weights",
    "mlp",
    "mlp_trainer",
    "softmax_cross_entropy",
    "unflatten_weights",
]
