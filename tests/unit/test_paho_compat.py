"""The paho 1.6 / 2.x adapter and the pycryptodome import names (no broker; the real
paho 1.6 run is tests/integration/test_paho_versions.py)."""

from __future__ import annotations

import sys
import types

import paho.mqtt.client as mqtt
import pytest

from edge_client.shared import paho_compat
from edge_client.shared.protocol.errors import LocalProtocolError
from edge_client.shared.secagg import shamir


def test_major_version_is_read_from_the_version_string():
    assert paho_compat.paho_major("1.6.1") == 1
    assert paho_compat.paho_major("2.1.0") == 2
    with pytest.raises(RuntimeError, match=r"unreadable version 'x\.y'"):
        paho_compat.paho_major("x.y")


def test_v1_codes_become_the_internal_form(monkeypatch):
    """paho 1.6 passes ints; the link sees (refused, text) and (text)."""
    monkeypatch.setattr(paho_compat, "PAHO_MAJOR", 1)
    seen: list[tuple] = []
    client = types.SimpleNamespace(on_connect=None, on_disconnect=None)
    paho_compat.bind_callbacks(client, lambda refused, reason: seen.append((refused, reason)),
                               lambda reason: seen.append((reason,)))
    client.on_connect(None, None, {}, 0)
    client.on_connect(None, None, {}, 5)
    client.on_disconnect(None, None, mqtt.MQTT_ERR_CONN_LOST)
    assert seen[0] == (False, mqtt.connack_string(0))
    assert seen[1][0] is True and "not authorised" in seen[1][1]
    assert seen[2] == ("The connection was lost.",)


def test_v2_reason_codes_become_the_internal_form():
    if paho_compat.PAHO_MAJOR < 2:
        pytest.skip("paho 2.x is not installed here")
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    seen: list[tuple] = []
    client = paho_compat.new_client("compat-test")
    paho_compat.bind_callbacks(client, lambda refused, reason: seen.append((refused, reason)),
                               lambda reason: seen.append((reason,)))
    client.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), None)
    client.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Not authorized"),
                      None)
    client.on_disconnect(client, None, None,
                         ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)
    assert seen == [(False, "Success"), (True, "Not authorized"), ("Unspecified error",)]


def _hide(monkeypatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError


def test_shamir_falls_back_to_debians_cryptodome_name(monkeypatch):
    fake = types.ModuleType("Cryptodome.Protocol.SecretSharing")
    fake.Shamir = type("Shamir", (), {})
    _hide(monkeypatch, "Crypto", "Crypto.Protocol", "Crypto.Protocol.SecretSharing")
    monkeypatch.setitem(sys.modules, "Cryptodome", types.ModuleType("Cryptodome"))
    monkeypatch.setitem(sys.modules, "Cryptodome.Protocol",
                        types.ModuleType("Cryptodome.Protocol"))
    monkeypatch.setitem(sys.modules, "Cryptodome.Protocol.SecretSharing", fake)
    assert shamir._shamir() is fake.Shamir


def test_shamir_without_pycryptodome_says_how_to_install(monkeypatch):
    _hide(monkeypatch, "Crypto", "Crypto.Protocol", "Crypto.Protocol.SecretSharing",
          "Cryptodome", "Cryptodome.Protocol", "Cryptodome.Protocol.SecretSharing")
    with pytest.raises(LocalProtocolError, match="apt install python3-pycryptodome"):
        shamir._shamir()
