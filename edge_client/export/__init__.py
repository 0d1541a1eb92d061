"""Model export for inference runtimes: ONNX, TFLite (LiteRT / TFLite Micro) and numpy int8.

Every path starts from the (arch, weights) the aggregator stores: `float_graph` reads
them into a short list of ops, `quantized_graph` adds int8 qparams, and each exporter
writes that one description in its own format. onnx and ai-edge-litert are imported
only inside the functions that need them.
"""

from edge_client.export.c_header import to_c_header
from edge_client.export.graph import ExportError, Graph, float_graph
from edge_client.export.onnx_export import to_onnx
from edge_client.export.quantized import QParams, QuantizedGraph, quantized_graph
from edge_client.export.tflite_export import to_tflite

__all__ = [
    "ExportError",
    "Graph",
    "QParams",
    "QuantizedGraph",
    "float_graph",
    "quantized_graph",
    "to_c_header",
    "to_onnx",
    "to_tflite",
]
