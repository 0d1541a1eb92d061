"""Local training for edge devices: a Trainer protocol, numpy layers, QAT and int8 math."""

from edge_client.shared.train_config import TrainConfig
from edge_client.shared.weights import Weights, flatten_sorted, unflatten_like
from edge_client.training.arch import build_model, mlp, sequential
from edge_client.training.layers import ActQuant, Conv1D, Dense, Flatten, Layer, MaxPool1D, ReLU
from edge_client.training.losses import softmax_cross_entropy
from edge_client.training.model import Sequential
from edge_client.training.numpy_trainer import NumpyTrainer, mlp_trainer
from edge_client.training.optim import SGD
from edge_client.training.quantize import (
    act_qparams,
    calibrate,
    dequantize_act,
    dequantize_weight,
    fake_quant_act,
    fake_quant_weight,
    quantize_act,
    quantize_bias,
    quantize_weight,
    weight_scales,
)
from edge_client.training.trainer import FitResult, Trainer
from edge_client.training.weights import check_weights_match

__all__ = [
    "SGD",
    "ActQuant",
    "Conv1D",
    "Dense",
    "FitResult",
    "Flatten",
    "Layer",
    "MaxPool1D",
    "NumpyTrainer",
    "ReLU",
    "Sequential",
    "TrainConfig",
    "Trainer",
    "Weights",
    "act_qparams",
    "build_model",
    "calibrate",
    "check_weights_match",
    "dequantize_act",
    "dequantize_weight",
    "fake_quant_act",
    "fake_quant_weight",
    "flatten_sorted",
    "mlp",
    "mlp_trainer",
    "quantize_act",
    "quantize_bias",
    "quantize_weight",
    "sequential",
    "softmax_cross_entropy",
    "unflatten_like",
    "weight_scales",
]
