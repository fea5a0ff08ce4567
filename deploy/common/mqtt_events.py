"""Gesture events to an MQTT broker: ``--events mqtt://[user[:pass]@]HOST[:PORT]/TOPIC``.

Each event is one message, the same JSON as a line of the events file, published with QoS 1 by
paho-mqtt (the ``[mqtt]`` extra, imported only when an ``mqtt://`` URI is used). The connection is
made, and the broker's answer awaited, when the sink opens, so a host that does not resolve, a broker
that cannot be reached and refused credentials end the run at start. A broker lost later is logged
and reconnected with back-off (``RECONNECT_S``) on paho's network thread; meanwhile events wait in
paho's bounded queue (``?queue=N``, default ``QUEUE``); once it is full new events are dropped and
counted, so memory stays bounded however long the broker is away.

The password is taken from ``$HAGRID_EDGE_MQTT_PASSWORD`` when that is set; one in the URI works too,
with a warning (it is visible in the process list). Messages never show it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from hagrid_edge.deploy.common.capture import SourceEvent
from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.errors import HagridEdgeError, MissingExtra

log = logging.getLogger("hagrid_edge.run")

PASSWORD_ENV = "HAGRID_EDGE_MQTT_PASSWORD"
DEFAULT_PORT = 1883
QUEUE = 1000  # events kept while the broker is away (paho's out-queue, in-flight ones included)
MAX_QUEUE = 1_000_000
CONNECT_TIMEOUT_S = 5.0  # TCP connect, then the broker's CONNACK, at start
RECONNECT_S = (1, 30)  # paho's back-off: 1 s, doubled after each failed try, at most 30 s
KEEPALIVE_S = 30  # a broker that vanishes without closing the socket is noticed within 1.5x this
CLOSE_FLUSH_S = 1.0  # at the end, the queued events get this long to reach a connected broker
STOP_WAIT_S = 1.0  # then paho's network thread gets this long to stop
QOS = 1
USAGE = "mqtt://[user[:pass]@]HOST[:PORT]/TOPIC[?queue=N]"


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise MissingExtra("mqtt", "paho-mqtt") from None
    return mqtt


@dataclass(frozen=True)
class MqttTarget:
    """A parsed ``mqtt://`` URI; ``display`` is the URI with the password masked."""

    display: str
    host: str
    port: int
    topic: str
    username: str | None
    password: str | None  # from the URI
    queue: int

    def credentials(self) -> tuple[str | None, str | None]:
        """(user, password): the password from ``$HAGRID_EDGE_MQTT_PASSWORD`` when set, else the URI's."""
        env = os.environ.get(PASSWORD_ENV)
        return self.username, env if env and self.username else self.password


def parse_mqtt_uri(uri: str) -> MqttTarget:
    """Check an ``mqtt://`` URI; ``HagridEdgeError`` naming it (password masked) and what is wrong."""
    parts = urlsplit(uri)
    display = uri
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        display = parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()
    where = f"--events {display}"
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise HagridEdgeError(f"{where}: the port is not a number in 1-65535 (write {USAGE})") from None
    if not parts.hostname:
        raise HagridEdgeError(f"{where}: no broker host (write {USAGE})")
    topic = unquote(parts.path[1:])
    if not topic:
        raise HagridEdgeError(f"{where}: no topic (write {USAGE})")
    if "+" in topic or "#" in topic or "#" in uri:  # a # in the URI ends its path: the topic's wildcard
        raise HagridEdgeError(f"{where}: the topic has a wildcard (+ or #); publish to a plain topic")
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(options) - {"queue"})
    if unknown:
        raise HagridEdgeError(f"{where}: unknown option {unknown[0]!r} (known: queue)")
    queue = QUEUE
    if "queue" in options:
        value = options["queue"][-1]
        if not value.isdigit() or not 1 <= int(value) <= MAX_QUEUE:
            raise HagridEdgeError(f"{where}: queue={value!r}: need a whole number of events in 1-{MAX_QUEUE}")
        queue = int(value)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttTarget(display, parts.hostname, port, topic, username, password, queue)


def password_warning(target: MqttTarget) -> str | None:
    """The warning for a password written on the command line, if there is one."""
    if target.password is None:
        return None
    if os.environ.get(PASSWORD_ENV) and target.username:
        return f"--events {target.display}: the URI's password is ignored: ${PASSWORD_ENV} is set and used"
    return (f"--events {target.display}: a password on the command line is visible to every user of this machine "
            f"(ps); set ${PASSWORD_ENV} instead")


def connect(target: MqttTarget, client_id: str, will: tuple[str, str] | None = None, reserve: int = 0) -> Any:
    """A paho client connected to the broker and accepted by it (CONNACK), its network loop not started;
    its queue holds ``target.queue`` events and ``reserve`` more messages (discovery, availability).

    Raises ``HagridEdgeError`` naming the URI: a host that does not resolve, a broker that cannot be
    reached or does not answer within ``CONNECT_TIMEOUT_S``, a connection the broker refuses.
    """
    mqtt = _paho()
    where = f"--events {target.display}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.connect_timeout = CONNECT_TIMEOUT_S
    client.max_queued_messages_set(target.queue + reserve)
    client.reconnect_delay_set(*RECONNECT_S)
    user, password = target.credentials()
    if user is not None:
        client.username_pw_set(user, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=QOS, retain=True)
    answer: list[Any] = []
    client.on_connect = lambda _c, _u, _flags, reason, _props: answer.append(reason)
    try:
        client.connect(target.host, target.port, KEEPALIVE_S)
    except socket.gaierror as e:
        raise HagridEdgeError(f"{where}: the host {target.host} does not resolve ({e.strerror})") from None
    except OSError as e:  # refused, unreachable, timed out
        reason = e.strerror or str(e) or type(e).__name__
        raise HagridEdgeError(f"{where}: cannot reach a broker at {target.host}:{target.port} ({reason})") from None
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not answer and time.monotonic() < deadline:
        if client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS and not answer:
            _drop(client)
            raise HagridEdgeError(f"{where}: {target.host}:{target.port} closed the connection before answering "
                                  "(is it an MQTT broker?)")
    if not answer:
        _drop(client)
        raise HagridEdgeError(f"{where}: {target.host}:{target.port} accepted the connection but gave no MQTT "
                              f"answer within {CONNECT_TIMEOUT_S:g} s")
    if answer[0].is_failure:
        _drop(client)
        raise HagridEdgeError(f"{where}: the broker refused the connection ({answer[0]})")
    client.on_connect = None
    return client


def _drop(client: Any) -> None:
    """Close a client whose network loop never started."""
    sock = client.socket()
    if sock is not None:
        sock.close()


def check(uri: str) -> None:
    """At start, before any model loads: the URI is valid and its broker accepts a connection."""
    target = parse_mqtt_uri(uri)
    warning = password_warning(target)
    if warning:
        log.warning("%s", warning)
    client = connect(target, f"hagrid-edge-check-{socket.gethostname()}-{os.getpid()}")
    client.disconnect()
    client.loop(0.1)
    _drop(client)


@dataclass
class MqttStats:
    published: int = 0  # acknowledged by the broker (PUBACK)
    dropped: int = 0  # refused while the queue was full (the broker away)
    unsent: int = 0  # still queued or unacknowledged when the run ended
    reconnects: int = 0

    def add(self, other: MqttStats) -> None:
        for name in ("published", "dropped", "unsent", "reconnects"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class MqttEvents:
    """The events sink for one ``mqtt://`` URI (``write``/``close`` like ``EventsOutput``).

    ``birth`` messages are published retained on every (re)connect (Home Assistant discovery and its
    "online"); ``will`` is the broker's last will for this connection and is also published, retained,
    when the sink closes (the "offline" of an availability topic).
    """

    def __init__(self, uri: str, birth: Sequence[tuple[str, str]] = (), will: tuple[str, str] | None = None,
                 client_id: str | None = None) -> None:
        self.target = parse_mqtt_uri(uri)
        self.name = self.target.display
        self.stats = MqttStats()
        self._birth, self._will = list(birth), will
        self._accepted = 0
        # Acknowledgements (paho's thread) are matched to what was published (the run loop's thread) by
        # message id; one may come before publish() has returned its id, so either side may see it first.
        self._lock = threading.Lock()
        self._claimed: dict[int, bool] = {}  # published, not yet acknowledged: mid -> is an event
        self._early: set[int] = set()  # acknowledged before publish() returned
        self._closing = False
        self._drop_logged = False  # one warning per time the queue fills
        self._dropped_at_loss = 0
        mqtt = _paho()
        self._queue_full = mqtt.MQTT_ERR_QUEUE_SIZE
        self._client = connect(self.target, client_id or f"hagrid-edge-{socket.gethostname()}-{os.getpid()}", will,
                               reserve=len(self._birth) + 1)  # events never crowd out discovery or "offline"
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._publish_birth()
        self._client.loop_start()

    @property
    def pending(self) -> int:
        """Events accepted but not yet acknowledged by the broker."""
        return self._accepted - self.stats.published

    def _publish(self, topic: str, payload: str, retain: bool, event: bool) -> Any:
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc == self._queue_full:
            return info
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.stats.published += event
            else:
                self._claimed[info.mid] = event
        return info

    # ---- paho's network thread --------------------------------------------------------------------
    def _publish_birth(self) -> None:
        for topic, payload in self._birth:
            self._publish(topic, payload, retain=True, event=False)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._lock:
            if mid in self._claimed:
                self.stats.published += self._claimed.pop(mid)
            else:
                self._early.add(mid)

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("--events %s: the broker refused the reconnection (%s); trying again", self.name, reason)
            return
        self.stats.reconnects += 1
        log.info("--events %s: reconnected to the broker; %d queued events are being sent, %d were dropped meanwhile",
                 self.name, self.pending, self.stats.dropped - self._dropped_at_loss)
        self._publish_birth()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._dropped_at_loss = self.stats.dropped
        if not self._closing:
            why = "" if str(reason) == "Unspecified error" else f" ({reason})"  # paho's word for a closed socket
            log.warning("--events %s: lost the broker%s; reconnecting with back-off (%d-%d s), keeping up to %d "
                        "events meanwhile", self.name, why, *RECONNECT_S, self.target.queue)

    # ---- the run loop -----------------------------------------------------------------------------
    def write(self, event: GestureEvent | SourceEvent) -> None:
        if self.pending < self.target.queue:
            info = self._publish(self.target.topic, json.dumps(event.to_dict()), retain=False, event=True)
            if info.rc != self._queue_full:
                self._accepted += 1
                self._drop_logged = False
                return
        self.stats.dropped += 1
        if not self._drop_logged:
            self._drop_logged = True
            log.warning("--events %s: the queue is full (%d events wait for the broker): new events are dropped "
                        "until it is back (counted in the summary)", self.name, self.target.queue)

    def close(self) -> None:
        """Give queued events ``CLOSE_FLUSH_S`` to reach a connected broker, say "offline", disconnect."""
        if self._closing:
            return
        deadline = time.monotonic() + CLOSE_FLUSH_S
        while self.pending and self._client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._will is not None and self._client.is_connected():
            info = self._publish(*self._will, retain=True, event=False)
            end = max(deadline, time.monotonic() + 0.2)
            while not self._acknowledged(info.mid) and time.monotonic() < end:
                time.sleep(0.01)
        connected = self._client.is_connected()
        self._closing = True
        self._client.disconnect()
        # paho's thread may be inside a reconnection attempt (up to CONNECT_TIMEOUT_S against a host that
        # does not answer): the run does not wait for it; the daemon thread ends when the attempt does.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_WAIT_S)
        self.stats.unsent = self.pending
        if self.stats.unsent:
            log.warning("--events %s: %d events were not delivered (the broker %s)", self.name, self.stats.unsent,
                        "did not acknowledge them in time" if connected else "is away")

    def _acknowledged(self, mid: int) -> bool:
        with self._lock:
            return mid not in self._claimed
