"""Update codecs: sparsify, quantize, index-code and compress a device's update vector.

Imported by devices and by the aggregator, so it depends on numpy, zlib and
`edge_client.shared.protocol.errors` only. The blob layout is documented in `pipeline`.
"""

from edge_client.shared.codecs.config import DENSE, CodecConfig
from edge_client.shared.codecs.error_feedback import ErrorFeedback
from edge_client.shared.codecs.pipeline import (
    Encoded,
    accumulate,
    decode_dense,
    decode_sparse,
    encode_vector,
)

__all__ = [
    "DENSE",
    "CodecConfig",
    "Encoded",
    "ErrorFeedback",
    "accumulate",
    "decode_dense",
    "decode_sparse",
    "encode_vector",
]
