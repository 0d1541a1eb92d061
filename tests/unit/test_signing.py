from __future__ import annotations

import subprocess
import sys

import msgpack
import pytest

from edge_client.shared.identity import Identity, verify
from edge_client.shared.protocol.errors import LocalProtocolError, RemoteProtocolError
from edge_client.shared.protocol.messages import Ack, Status, decode, encode
from edge_client.shared.protocol.signing import (
    DOMAIN,
    SIGNED_KIND,
    SignedEnvelope,
    is_signed,
    open_envelope,
    seal,
    verify_envelope,
)

BODY = encode(Status(device_id="dev-1", online=True, time=12.5))


@pytest.fixture(scope="module")
def ident() -> Identity:
    return Identity.generate()


def _envelope(**fields) -> bytes:
    base = {"v": 1, "kind": SIGNED_KIND, "key_id": "0123456789abcdef", "body": BODY,
            "sig": bytes(64)}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not _DROP}, use_bin_type=True)


_DROP = object()


def test_seal_open_verify_round_trip(ident):
    sealed = seal(BODY, ident)
    assert is_signed(sealed)
    envelope = open_envelope(sealed)
    assert envelope == SignedEnvelope(key_id=ident.key_id, body=BODY,
                                      signature=envelope.signature)
    assert len(envelope.signature) == 64
    body = verify_envelope(envelope, ident.public_bytes)
    assert decode(body) == Status(device_id="dev-1", online=True, time=12.5)


def test_the_signature_covers_the_domain_and_the_body(ident):
    envelope = open_envelope(seal(BODY, ident))
    assert verify(ident.public_bytes, DOMAIN + BODY, envelope.signature)
    assert not verify(ident.public_bytes, BODY, envelope.signature)


def test_a_raw_signature_over_the_body_alone_is_rejected(ident):
    raw = _envelope(key_id=ident.key_id, sig=ident.sign(BODY))
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        verify_envelope(open_envelope(raw), ident.public_bytes)


def test_a_tampered_body_is_a_bad_signature(ident):
    envelope = open_envelope(seal(BODY, ident))
    other = encode(Status(device_id="dev-2", online=True, time=12.5))
    forged = SignedEnvelope(key_id=envelope.key_id, body=other, signature=envelope.signature)
    with pytest.raises(RemoteProtocolError, match="bad signature") as info:
        verify_envelope(forged, ident.public_bytes)
    assert info.value.reason == "bad signature"
    flipped = bytes([BODY[0]]) + bytes([BODY[1] ^ 1]) + BODY[2:]
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        verify_envelope(open_envelope(_envelope(key_id=ident.key_id, body=flipped,
                                                sig=envelope.signature)), ident.public_bytes)


def test_a_tampered_signature_is_a_bad_signature(ident):
    envelope = open_envelope(seal(BODY, ident))
    sig = envelope.signature
    forged = SignedEnvelope(envelope.key_id, envelope.body, sig[:5] + bytes([sig[5] ^ 1]) + sig[6:])
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        verify_envelope(forged, ident.public_bytes)


def test_an_envelope_from_another_key_is_a_bad_signature(ident):
    intruder = Identity.generate()
    envelope = open_envelope(seal(BODY, intruder))
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        verify_envelope(envelope, ident.public_bytes)
    # claiming the victim's key id changes nothing: the key, not the id, decides
    claimed = SignedEnvelope(ident.key_id, envelope.body, envelope.signature)
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        verify_envelope(claimed, ident.public_bytes)


@pytest.mark.parametrize("public", [b"", b"short", b"\xff" * 32])
def test_a_malformed_public_key_is_a_bad_signature(ident, public):
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        verify_envelope(open_envelope(seal(BODY, ident)), public)


@pytest.mark.parametrize(("message", "reason"), [
    (b"\xc1not msgpack", "not valid MessagePack"),
    (b"", "not valid MessagePack"),
    (msgpack.packb([1, 2, 3]), "not a map"),
    (_envelope(v=2), "unsupported protocol version"),
    (_envelope(v=_DROP), "unsupported protocol version"),
    (_envelope(kind="status"), "expected a message of kind 'signed'"),
    (_envelope(kind=_DROP), "expected a message of kind 'signed'"),
    (_envelope(key_id=_DROP), "missing field 'key_id'"),
    (_envelope(body=_DROP), "missing field 'body'"),
    (_envelope(sig=_DROP), "missing field 'sig'"),
    (_envelope(key_id=None), "missing field 'key_id'"),
    (_envelope(key_id=b"0123456789abcdef"), "'key_id' has the wrong type"),
    (_envelope(key_id=12), "'key_id' has the wrong type"),
    (_envelope(key_id=""), "key_id must be 1 to 64"),
    (_envelope(key_id="k" * 65), "key_id must be 1 to 64"),
    (_envelope(key_id="bad\nid"), "printable ASCII"),
    (_envelope(key_id="clé"), "printable ASCII"),
    (_envelope(body="text, not bytes"), "'body' has the wrong type"),
    (_envelope(body=[1, 2]), "'body' has the wrong type"),
    (_envelope(body=b""), "'body' is empty"),
    (_envelope(sig="x" * 64), "'sig' has the wrong type"),
    (_envelope(sig=bytes(63)), "must be 64 bytes, got 63"),
    (_envelope(sig=bytes(65)), "must be 64 bytes, got 65"),
    (_envelope(sig=b""), "must be 64 bytes, got 0"),
])
def test_malformed_envelopes_are_refused_with_a_reason(message, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        open_envelope(message)


def test_a_key_id_of_64_characters_is_fine():
    assert open_envelope(_envelope(key_id="k" * 64)).key_id == "k" * 64


def test_is_signed_is_a_cheap_kind_check():
    assert is_signed(_envelope())  # not verified, only the kind
    assert not is_signed(BODY)
    assert not is_signed(encode(Ack(status="accepted")))
    assert not is_signed(b"\xc1garbage")
    assert not is_signed(b"")
    assert not is_signed(_envelope(v=2))
    assert not is_signed("not bytes")  # type: ignore[arg-type]


def test_a_plain_decoder_refuses_an_envelope(ident):
    with pytest.raises(RemoteProtocolError, match="unknown message kind 'signed'"):
        decode(seal(BODY, ident))


@pytest.mark.parametrize("body", [b"garbage", b"", msgpack.packb({"v": 1}), "text"])
def test_seal_only_takes_encoded_messages(ident, body):
    with pytest.raises(LocalProtocolError):
        seal(body, ident)


def test_seal_refuses_to_nest_envelopes(ident):
    with pytest.raises(LocalProtocolError, match="'signed'"):
        seal(seal(BODY, ident), ident)


def test_seal_checks_what_the_signer_returns():
    class Broken:
        key_id = "abc"

        def sign(self, data: bytes) -> bytes:
            return b"short"

    with pytest.raises(LocalProtocolError, match="64-byte"):
        seal(BODY, Broken())


def test_the_protocol_does_not_import_cryptography():
    code = ("import sys, edge_client.shared.protocol, edge_client.shared.protocol.signing as s\n"
            "assert 'cryptography' not in sys.modules, 'imported at import time'\n"
            "class Fake:\n"
            "    key_id = 'fake'\n"
            "    def sign(self, data): return bytes(64)\n"
            "p = edge_client.shared.protocol\n"
            "body = p.encode(p.Ack(status='accepted'))\n"
            "s.open_envelope(s.seal(body, Fake()))\n"
            "assert 'cryptography' not in sys.modules, 'imported by seal or open'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
