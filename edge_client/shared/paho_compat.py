"""paho-mqtt 1.6 and 2.x behind one small interface, so a device runs on either.

Debian bookworm (and so 32-bit Raspberry Pi OS, where pip has no armv7l wheels to offer)
ships paho-mqtt 1.6.1; pip gives 2.x. The two differ where MqttLink touches them: 2.x
needs `callback_api_version` to create a client and passes reason-code objects (and
properties) to on_connect/on_disconnect; 1.6 takes no such argument and passes ints. Here
the major version is read once, the client is created the right way for it, and both
callbacks are adapted to one internal form: `on_connect(failed, reason)` and
`on_disconnect(reason)`, with the reason as readable text. Everything else MqttLink uses
(publish's MQTTMessageInfo, `max_queued_messages_set`, `reconnect_delay_set`,
`on_connect_fail`, the internal `_packet_write`) exists with the same meaning in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt

ConnectHandler = Callable[[bool, str], None]  # (refused, reason)
DisconnectHandler = Callable[[str], None]  # (reason)


def paho_major(version: str | None = None) -> int:
    """The major version of the installed paho-mqtt (or of `version`)."""
    text = paho.mqtt.__version__ if version is None else version
    try:
        return int(text.split(".", 1)[0])
    except ValueError as exc:
        raise RuntimeError(f"paho-mqtt reports an unreadable version {text!r}") from exc


PAHO_MAJOR = paho_major()
if PAHO_MAJOR not in (1, 2):
    raise RuntimeError(f"fedge needs paho-mqtt 1.6 or 2.x; this is {paho.mqtt.__version__}")


def new_client(client_id: str) -> mqtt.Client:
    """An MQTT 3.1.1 client with a clean session, created the way this paho wants."""
    if PAHO_MAJOR >= 2:
        return mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                           client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    return mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)


def bind_callbacks(client: mqtt.Client, on_connect: ConnectHandler,
                   on_disconnect: DisconnectHandler) -> None:
    """Install on_connect and on_disconnect on `client`, adapted to the internal form."""
    if PAHO_MAJOR >= 2:
        def connect_v2(_client: Any, _userdata: Any, _flags: Any, reason_code: Any,
                       _properties: Any) -> None:
            on_connect(bool(reason_code.is_failure), str(reason_code))

        def disconnect_v2(_client: Any, _userdata: Any, _flags: Any, reason_code: Any,
                          _properties: Any) -> None:
            on_disconnect(str(reason_code))

        client.on_connect = connect_v2
        client.on_disconnect = disconnect_v2
        return

    def connect_v1(_client: Any, _userdata: Any, _flags: Any, rc: int) -> None:
        on_connect(rc != mqtt.CONNACK_ACCEPTED, connack_reason(rc))

    def disconnect_v1(_client: Any, _userdata: Any, rc: int) -> None:
        on_disconnect(disconnect_reason(rc))

    client.on_connect = connect_v1
    client.on_disconnect = disconnect_v1


def connack_reason(rc: int) -> str:
    """paho 1.x's CONNACK code as text ("Connection Refused: not authorised.")."""
    return str(mqtt.connack_string(rc))


def disconnect_reason(rc: int) -> str:
    """paho 1.x's disconnect code as text ("The connection was lost.")."""
    return str(mqtt.error_string(rc))


def enable_manual_ack(client: mqtt.Client) -> bool:
    """Acknowledge received QoS 1 messages only when the owner says so (`client.ack`), so
    that a burst waits at the broker (its in-flight window) rather than in our memory.
    paho 2.x only; on 1.6 this returns False and paho acknowledges each message when
    on_message returns, as before (the bounded inbox still holds paho's thread)."""
    if PAHO_MAJOR < 2:
        return False
    client.manual_ack_set(True)
    return True
