"""The lean blob frame (codecs/frame.py, version 2) that updates use: the same vectors as
version 1 in fewer bytes, the seed checked through the crc32, and every damaged or
hostile frame refused with a RemoteProtocolError."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from edge_client.shared.codecs import CodecConfig, decode_sparse, encode_vector
from edge_client.shared.codecs.frame import LEAN_FORMAT_VERSION, TRAILER_SIZE
from edge_client.shared.protocol.errors import RemoteProtocolError

N = 3000
SEED = 7
CONFIGS = [
    CodecConfig(sparsify="topk", fraction=0.06, quantize="q4"),
    CodecConfig(sparsify="topk", fraction=0.01, quantize="q2", compress="none"),
    CodecConfig(sparsify="threshold", threshold=1.0, quantize="f16"),
    CodecConfig(sparsify="randk", fraction=0.05, quantize="f32", compress="none"),
    CodecConfig(sparsify="none", quantize="q8", block_size=32),
]
VECTOR = np.random.default_rng(0).standard_normal(N).astype(np.float32)


def _encode(config: CodecConfig, frame: int) -> bytes:
    return encode_vector(VECTOR, config, SEED, np.random.default_rng(1), frame=frame).blob


def _reseal(framed: bytes, seed: int = SEED) -> bytes:
    """What a hostile sender who knows the seed does: a fresh crc32 over damaged bytes."""
    crc = zlib.crc32(framed, zlib.crc32(seed.to_bytes(8, "little")))
    return framed + crc.to_bytes(TRAILER_SIZE, "little")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name())
def test_the_lean_frame_decodes_to_what_version_1_does_in_fewer_bytes(config):
    old, lean = _encode(config, 1), _encode(config, LEAN_FORMAT_VERSION)
    assert lean[0] == LEAN_FORMAT_VERSION and old[0] == 1
    for a, b in zip(decode_sparse(old, config, N, SEED), decode_sparse(lean, config, N, SEED),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # header 32 -> 9 or 10 bytes; raw deflate drops zlib's 6 bytes of wrapper (on this
    # random vector the separate value block wins nothing back and may cost a byte or two)
    saved = 22 + (3 if config.compress == "zlib" else 0) - (4 if config.sparsify == "randk" else 0)
    assert len(old) - len(lean) >= saved


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name())
def test_every_truncation_and_every_flipped_byte_is_refused(config):
    blob = _encode(config, LEAN_FORMAT_VERSION)
    for cut in range(len(blob)):
        with pytest.raises(RemoteProtocolError):
            decode_sparse(blob[:cut], config, N, SEED)
    for at in range(0, len(blob), 7):
        damaged = bytearray(blob)
        damaged[at] ^= 0x40
        with pytest.raises(RemoteProtocolError):
            decode_sparse(bytes(damaged), config, N, SEED)


def test_values_in_their_own_deflate_block_save_bytes_on_a_skewed_update():
    """A trained update's top-k indices cluster and its 4-bit codes do not: separate
    blocks let each have its own code tables (here on a heavy-tailed vector)."""
    config = CONFIGS[0]
    rng = np.random.default_rng(3)
    v = (rng.standard_normal(N) * np.repeat(rng.gamma(0.3, size=N // 30), 30)).astype(np.float32)
    lean = encode_vector(v, config, SEED, np.random.default_rng(1), frame=2).blob
    old = encode_vector(v, config, SEED, np.random.default_rng(1)).blob
    np.testing.assert_array_equal(decode_sparse(lean, config, N, SEED)[1],
                                  decode_sparse(old, config, N, SEED)[1])
    assert len(lean) < len(old) - 22


def test_another_seed_fails_the_crc():
    config = CONFIGS[0]
    with pytest.raises(RemoteProtocolError, match="another seed"):
        decode_sparse(_encode(config, LEAN_FORMAT_VERSION), config, N, SEED + 1)


@pytest.mark.parametrize("header, match", [
    (bytes([2, 0x80 | 1 | 3 << 2]), "codec codes"),         # a high bit set
    (bytes([2, 1 | 7 << 2]), "codec codes"),                 # quantizer 7 does not exist
    (bytes([2, 1 | 3 << 2 | 1 << 5, 0x80]), "ends inside"),  # a varint cut short
    (bytes([2, 1 | 3 << 2 | 1 << 5, 0x80, 0x00]), "shortest form"),
    (bytes([2, 1 | 3 << 2 | 1 << 5]) + b"\xff" * 5 + b"\x01", "longer than 5"),
    (bytes([2, 1 | 3 << 2 | 1 << 5]) + b"\xff" * 4 + b"\x7f", "past 2\\*\\*32"),
    (bytes([2, 2 | 0 << 2, 1, 1, 1, 1, 0xAA]), "ends inside"),  # random-k: check cut short
])
def test_a_resealed_hostile_header_gets_a_reason(header, match):
    config = CONFIGS[0]
    with pytest.raises(RemoteProtocolError, match=match):
        decode_sparse(_reseal(header), config, N, SEED)


def test_resealed_header_fields_are_still_checked_against_the_config():
    config = CONFIGS[0]
    blob = _encode(config, LEAN_FORMAT_VERSION)
    framed = bytearray(blob[:-TRAILER_SIZE])
    framed[1] = 1 | 2 << 2 | 1 << 5  # q2 where the config says q4
    with pytest.raises(RemoteProtocolError, match="another codec"):
        decode_sparse(_reseal(bytes(framed)), config, N, SEED)


def test_a_raw_deflate_bomb_is_refused():
    config = CONFIGS[0]
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = bomb.compress(b"\x00" * 10**6) + bomb.flush()
    head = bytes([2, 1 | 3 << 2 | 1 << 5, 0x80, 0x02, 0xB8, 0x17, 180, 0x01, 0x40])
    with pytest.raises(RemoteProtocolError):
        decode_sparse(_reseal(head + body), config, N, SEED)
