"""A thin shell around paho-mqtt shared by devices and the aggregator.

paho's callbacks run on its network thread; here they only put events on a queue,
so the owner's loop handles every message on one thread of its own. The link
remembers its subscriptions and renews them on every (re)connect, because fedge uses
clean sessions and relies on retained messages and resends rather than broker state.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_client.shared import paho_compat
from edge_client.shared.inbox import Inbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Connected:
    """The link is (re)connected and its subscriptions are renewed."""


@dataclass(frozen=True)
class Disconnected:
    reason: str


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retained: bool
    mid: int = 0  # for a manual ack (MqttLink.ack); 0 when paho acknowledged it itself
    qos: int = 0
    session: int = 0  # which connection brought it: a mid means nothing on another


LinkEvent = Connected | Disconnected | Inbound


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True)
class TlsConfig:
    """Server verification (and, for mTLS, our certificate) for a broker that speaks TLS."""

    ca_file: Path  # CA that signed the broker's certificate
    cert_file: Path | None = None  # client certificate (mTLS)
    key_file: Path | None = None
    # Only for tests with certificates that lack the broker's name; the default verifies it.
    insecure_skip_hostname: bool = False


@dataclass(frozen=True)
class Credentials:
    """Username and password; the password stays out of repr so it never reaches a log."""

    username: str
    password: str = field(repr=False)


class MqttLink:
    """One MQTT connection; MQTT 3.1.1 so it works with every broker fedge supports."""

    def __init__(self, client_id: str, host: str, port: int, events: queue.Queue | Inbox,
                 keepalive_s: int = 30, will: Will | None = None,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 tls: TlsConfig | None = None, credentials: Credentials | None = None,
                 max_unconfirmed: int = 5000, manual_ack: bool = False) -> None:
        self.host, self.port = host, port
        # Unconfirmed QoS 1 publishes paho may hold: past it, publish() refuses messages
        # that are not retained (acks), so answering a flood cannot grow without bound
        # while the broker's confirmations wait behind that flood; retained state (models,
        # tasks, statuses) always goes.
        self.max_unconfirmed = max_unconfirmed
        self.refused = 0
        self._refusals_logged = 0
        self._refusal_logged_at: float | None = None
        self.events = events
        self.keepalive_s = keepalive_s
        self.bytes_out = self.bytes_in = 0
        self._filters: set[str] = set()
        self._unconfirmed: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # see _write_pending
        self._stopping = False
        self._connected = threading.Event()
        self._client = _new_client(client_id, will, tls, credentials, reconnect_min_s,
                                   reconnect_max_s)
        paho_compat.bind_callbacks(self._client, self._on_connect, self._on_disconnect)
        self.acks = InboundAcks(self._client, manual_ack)  # the aggregator's: manual
        self._client.on_connect_fail = self._on_connect_fail
        self.connect_failures = 0  # in a row; a wrong host or port shows in the log
        self.refusals = 0  # connections in a row the broker closed or refused unaccepted
        self._client.on_message = self._on_message

    # -- paho callbacks: network thread, enqueue only (paho_compat adapts 1.6 and 2.x)
    def _on_connect(self, refused: bool, reason: str) -> None:
        if refused:
            self.refusals += 1
            if _worth_saying(self.refusals):
                _log_refused(self.host, self.port, self.refusals, reason)
            return
        with self._lock:
            filters = sorted(self._filters)
        self.acks.new_session()
        for topic in filters:
            self._client.subscribe(topic, qos=1)
        self.connect_failures = 0
        self.refusals = 0
        self._connected.set()
        self.events.put(Connected())

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        """paho retries quietly; say so (a wrong host looks like a hang), not too often."""
        self.connect_failures += 1
        if _worth_saying(self.connect_failures):
            _log_unreachable(self.host, self.port, self.connect_failures)

    def _on_disconnect(self, reason: str) -> None:
        if not self._connected.is_set():  # closed before the broker accepted us
            self.refusals += 1
            if _worth_saying(self.refusals):
                _log_closed_early(self.host, self.port, self.refusals, reason)
        self._connected.clear()
        self.events.put(Disconnected(reason))

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        self.bytes_in += len(message.payload)
        event = self.acks.inbound(message)
        if isinstance(self.events, Inbox):
            self.events.put(event, while_waiting=self._write_pending)
        else:
            self.events.put(event)

    def _write_pending(self) -> None:
        """On paho's network thread, held by a full inbox: write what is queued to go out.

        paho writes only between reads; a thread held inside a read would otherwise send
        nothing (acks, PUBACKs) until the flood behind it is read. This runs on paho's own
        thread, so nothing else touches its socket meanwhile. It calls paho's internal
        `_packet_write`, not `loop_write`: on an error, or on a DISCONNECT packet, those
        call on_disconnect under a lock this callback already holds (a self-deadlock).
        An error is left in place for paho's loop to find; a DISCONNECT is never queued
        while this runs (`stop` takes `_write_lock` first). Without `_packet_write` (a
        future paho), nothing is written here: the link still works, only slower to ack.
        """
        write = getattr(self._client, "_packet_write", None)
        if write is None or not self._write_lock.acquire(blocking=False):
            return
        try:
            if not self._stopping:
                write()
        except (OSError, ValueError) as exc:  # the connection broke: paho notices on return
            log.debug("mqtt: write while waiting failed: %s", exc)
        finally:
            self._write_lock.release()

    # -- owner's thread
    def start(self) -> None:
        """Connect in the background; paho retries with backoff until it gets through.
        Also after a `stop` (a device that sleeps between tasks)."""
        if isinstance(self.events, Inbox):
            self.events.reopen()
        self._stopping = False
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self._client.loop_start()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Disconnect once the broker has confirmed what we published (or time runs out).

        paho's disconnect() drops packets it has not written yet, so without this the
        last acks or the final task of a run could be lost. A bounded inbox is closed
        first: its owner no longer reads it, and a network thread waiting for room in it
        could not write those packets.
        """
        if isinstance(self.events, Inbox):
            self.events.close()
        self.flush(flush_timeout_s)
        with self._write_lock:
            self._stopping = True  # no more writes from inside a callback (DISCONNECT)
        self._client.disconnect()
        # paho 2.x: its network thread ends on the disconnect and sets its own handle to
        # None between loop_stop's check and its join(); the thread is gone, as wanted.
        with contextlib.suppress(AttributeError):
            self._client.loop_stop()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every QoS 1 publish so far is confirmed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        for info in list(self._unconfirmed):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.connected:
                return False
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):
                return False
        self._unconfirmed.clear()
        return True

    def drop_connection(self) -> None:
        """Cut the TCP connection without a DISCONNECT, as a lost link would.

        paho then sees a broken connection and reconnects on its own; tests use this.
        """
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # TCP, or TLS (an SSLSocket is one)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def ack(self, event: object) -> None:
        """With manual acks: the owner took in `event`; the broker may send the next."""
        self.acks.ack(event, self.connected)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic: str) -> None:
        with self._lock:
            self._filters.add(topic)
        if self.connected:
            self._client.subscribe(topic, qos=1)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._filters.discard(topic)
        if self.connected:
            self._client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """QoS 1 publish; False when not connected (the caller resends after Connected), or
        when too many publishes wait for the broker's confirmation and this one is not
        retained (an ack: the device resends its update and is answered then)."""
        if not self.connected:
            return False
        # Confirmed ones leave from the front: O(1) amortized, not a pass over all of
        # them per publish (thousands pile up while a flood is being answered).
        while self._unconfirmed and self._unconfirmed[0].is_published():
            self._unconfirmed.popleft()
        if not retain and len(self._unconfirmed) >= self.max_unconfirmed:
            self._refuse(topic)
            return False
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._unconfirmed.append(info)
        self.bytes_out += len(payload)
        return True

    def _refuse(self, topic: str) -> None:
        """Count a refused publish; log the first, then at most one line per 10 s."""
        self.refused += 1
        now = time.monotonic()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= 10.0:
            log.warning("mqtt: %d publishes wait for the broker's confirmation; %d not sent "
                        "since the last report (latest to %s)", len(self._unconfirmed),
                        self.refused - self._refusals_logged, topic)
            self._refusal_logged_at, self._refusals_logged = now, self.refused


class InboundAcks:
    """Manual acks of received QoS 1 messages (the aggregator's link; paho 2.x).

    paho acknowledges a message to the broker when on_message returns. With manual acks
    it waits until the owner's loop has taken the message (`ack`), so a burst waits in
    the broker's in-flight window and queue, not in our memory. Devices keep paho's own
    acks; on paho 1.6 this is off (paho_compat.enable_manual_ack)."""

    def __init__(self, client: mqtt.Client, wanted: bool) -> None:
        self.client = client
        self.enabled = wanted and paho_compat.enable_manual_ack(client)
        self._session = 0  # connections so far: a mid belongs to one of them
        self._lock = threading.Lock()

    def new_session(self) -> None:
        with self._lock:
            self._session += 1

    def inbound(self, message: mqtt.MQTTMessage) -> Inbound:
        if not self.enabled:
            return Inbound(message.topic, bytes(message.payload), bool(message.retain))
        with self._lock:
            session = self._session
        return Inbound(message.topic, bytes(message.payload), bool(message.retain),
                       message.mid, message.qos, session)

    def ack(self, event: object, connected: bool) -> None:
        """Not for a message of an earlier connection: the broker forgot it (clean
        session), and its mid may name another message by now."""
        if not self.enabled or not isinstance(event, Inbound) or event.qos == 0:
            return
        with self._lock:
            current = event.session == self._session
        if current and connected:
            self.client.ack(event.mid, event.qos)


def _new_client(client_id: str, will: Will | None, tls: TlsConfig | None,
                credentials: Credentials | None, reconnect_min_s: float,
                reconnect_max_s: float) -> mqtt.Client:
    """A paho client (1.6 or 2.x) set up as MqttLink wants it, callbacks not yet bound."""
    client = paho_compat.new_client(client_id)
    # paho backs off exponentially from min to max; a random start per device is the
    # jitter that keeps a fleet from reconnecting in lockstep after an outage.
    min_delay = reconnect_min_s * random.uniform(1.0, 2.0)
    # paho's stubs say int; it only adds, doubles and compares the delays: floats work
    client.reconnect_delay_set(min_delay, reconnect_max_s)  # type: ignore[arg-type]
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(200)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
    if tls is not None:
        _apply_tls(client, tls)
    if credentials is not None:
        client.username_pw_set(credentials.username, credentials.password)
    return client


def _log_refused(host: str, port: int, refusals: int, reason: str) -> None:
    log.warning("mqtt: the broker at %s:%d refused the connection: %s%s (%d time%s in a "
                "row)", host, port, reason, _refusal_hint(reason), refusals,
                "" if refusals == 1 else "s")


def _log_unreachable(host: str, port: int, failures: int) -> None:
    log.warning("mqtt: cannot reach the broker at %s:%d (%d attempt%s so far); retrying",
                host, port, failures, "" if failures == 1 else "s")


def _log_closed_early(host: str, port: int, refusals: int, reason: str) -> None:
    log.warning("mqtt: the broker at %s:%d closed the connection before accepting it (%d "
                "time%s in a row; %s): it may be at a limit (mosquitto's max_connections, "
                "or its open-file limit: LimitNOFILE in its systemd unit, 1,024 by default, "
                "caps it near 1,000 clients), or it refuses this client; its log says which",
                host, port, refusals, "" if refusals == 1 else "s", reason)


def _worth_saying(count: int) -> bool:
    """The 1st, 10th, 100th, ... time in a row: an outage does not flood the log."""
    return math.log10(count).is_integer()


def _refusal_hint(reason: str) -> str:
    """What a CONNACK refusal usually means for a fedge device or gateway."""
    lowered = reason.lower()
    if "password" in lowered or "not authori" in lowered:  # 2.x: -ized, 1.6: -ised
        return (" (check [broker_auth] username and password_file against the broker's "
                "password file; `fedge aggregator broker-config` writes both)")
    if "identifier" in lowered:
        return " (the broker refuses this client id)"
    if "unavailable" in lowered:
        return " (the broker is not ready or is at a limit)"
    return ""


def _apply_tls(client: mqtt.Client, tls: TlsConfig) -> None:
    """Verify the broker against our CA (and its name unless told not to); mTLS if given."""
    client.tls_set(ca_certs=str(tls.ca_file),
                   certfile=str(tls.cert_file) if tls.cert_file is not None else None,
                   keyfile=str(tls.key_file) if tls.key_file is not None else None,
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if tls.insecure_skip_hostname:
        client.tls_insecure_set(True)
