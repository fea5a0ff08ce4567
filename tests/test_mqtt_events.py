"""``--events mqtt://...`` and ``--homeassistant`` against a real Mosquitto broker on a loopback port.

Each broker is started by the tests (``mosquitto`` from apt) with its own config; the runs are the
real CLI on the shipped sample (``assets/hagrid-sample``) with the shipped one-stage detector.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import missing, need_module

from hagrid_edge.cli import main
from hagrid_edge.deploy.common.homeassistant import START_TEMPLATE
from hagrid_edge.labels import GESTURES

mqtt = need_module("paho.mqtt.client", "the [mqtt] extra (pip install 'hagrid-edge[mqtt]')")

ROOT = Path(__file__).resolve().parents[1]
ENGINE = str(ROOT / "assets/models/gesture_detector.onnx")
SAMPLE = ROOT / "assets/hagrid-sample"
STILLS = ("--debounce-n", "1", "--debounce-m", "1", "--debounce-k", "1")  # every photo its own scene
USER, PASSWORD = "edge", "s3cret-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto process on 127.0.0.1:``port``; ``persistent`` keeps sessions and queues over a restart."""

    def __init__(self, folder: Path, persistent: bool = False, password: bool = False) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            missing("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
        self.exe, self.folder, self.port = exe, folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}"]
        if persistent:
            lines += ["persistence true", f"persistence_location {folder}/"]
        if password:
            tool = shutil.which("mosquitto_passwd")
            if tool is None:
                missing("mosquitto_passwd is not installed (apt-get install mosquitto)")
            subprocess.run([tool, "-b", "-c", str(folder / "passwd"), USER, PASSWORD], check=True)
            os.chmod(folder / "passwd", 0o600)
            lines += ["allow_anonymous false", f"password_file {folder}/passwd"]
        else:
            lines.append("allow_anonymous true")
        (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.folder / "mosquitto.log", "ab")  # noqa: SIM115 (the broker's stdout while it runs)
        self.proc = subprocess.Popen([self.exe, "-c", str(self.folder / "mosquitto.conf")], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()
            time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it saves its sessions (persistence) and exits
            self.proc.wait(10)
        self.proc = None

    def uri(self, topic: str, user: str = "") -> str:
        return f"mqtt://{user}{'@' if user else ''}127.0.0.1:{self.port}/{topic}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


class Subscriber:
    """A paho client that records every message (receive time, topic, payload, retained) on ``topics``.

    With ``client_id`` its session is persistent (clean session off): a broker that keeps sessions
    queues its messages while it is away."""

    def __init__(self, port: int, topics: list[str], client_id: str = "") -> None:
        self.messages: list[tuple[float, str, str, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not client_id, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(1, 1)

        def on_connect(client, _u, _f, reason, _p) -> None:
            if not reason.is_failure:
                client.subscribe([(t, 1) for t in topics])

        def on_message(_c, _u, msg) -> None:
            with self._lock:
                self.messages.append((time.time(), msg.topic, msg.payload.decode(), bool(msg.retain)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5), "no SUBACK"

    def payloads(self, topic: str) -> list[str]:
        with self._lock:
            return [m[2] for m in self.messages if m[1] == topic]

    def wait(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hagrid_edge.cli", "run", "--engine", ENGINE, "--headless", *args]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def first_seen(payloads: list[str]) -> list[str]:
    """QoS 1 is at least once: a message resent after a reconnect may arrive twice."""
    seen: set[str] = set()
    return [p for p in payloads if not (p in seen or seen.add(p))]


def test_every_event_of_the_sample_reaches_a_subscriber_and_home_assistant_sees_each_gesture(
        broker: Broker, tmp_path: Path) -> None:
    """The sample run: the subscriber gets exactly the events file's lines, in order; the retained
    discovery describes one trigger per gesture whose template picks that gesture's starts."""
    jinja2 = need_module("jinja2", "renders the triggers' value_template as Home Assistant does (Jinja)")
    sub = Subscriber(broker.port, ["hagrid/events"])
    ev, summary = tmp_path / "ev.jsonl", tmp_path / "summary.json"
    p = subprocess.run(cli("--source", str(SAMPLE), "--events", str(ev), "--events", broker.uri("hagrid/events"),
                           "--homeassistant", "--ha-node-id", "testnode", "--summary", str(summary)),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    expected = lines(ev)
    assert len(expected) >= 30  # the sample's 18 photos start and end their gestures
    sub.wait(lambda: len(sub.payloads("hagrid/events")) >= len(expected))
    sub.close()
    assert sub.payloads("hagrid/events") == expected
    stats = json.loads(summary.read_text())["mqtt"]
    assert stats == {"published": len(expected), "dropped": 0, "unsent": 0, "reconnects": 0}
    assert f"mqtt events published {len(expected)}, dropped (queue full) 0" in p.stdout

    ha = Subscriber(broker.port, ["homeassistant/#", "hagrid-edge/testnode/availability"])  # after the run
    ha.wait(lambda: len(ha.messages) >= len(GESTURES) + 2, timeout=5)
    ha.close()
    assert all(retained for *_, retained in ha.messages)
    by_topic = {topic: payload for _, topic, payload, _ in ha.messages}
    assert by_topic.pop("hagrid-edge/testnode/availability") == "offline"  # the run ended
    sensor = json.loads(by_topic.pop("homeassistant/binary_sensor/testnode/running/config"))
    assert (sensor["state_topic"], sensor["payload_on"], sensor["payload_off"]) == (
        "hagrid-edge/testnode/availability", "online", "offline")
    assert set(by_topic) == {f"homeassistant/device_automation/testnode/gesture_{g}/config" for g in GESTURES}
    template = jinja2.Environment().from_string(START_TEMPLATE)
    starts = [json.loads(line) for line in expected]
    for gesture in GESTURES:
        config = json.loads(by_topic[f"homeassistant/device_automation/testnode/gesture_{gesture}/config"])
        assert {k: config[k] for k in ("automation_type", "type", "subtype", "topic", "payload", "qos")} == {
            "automation_type": "trigger", "type": "gesture", "subtype": gesture, "topic": "hagrid/events",
            "payload": gesture, "qos": 1}
        assert config["device"] == sensor["device"] and config["device"]["identifiers"] == ["hagrid-edge_testnode"]
        assert config["value_template"] == START_TEMPLATE
        fired = [e for e in starts if template.render(value_json=e) == config["payload"]]
        assert fired == [e for e in starts if e["event"] == "start" and e["gesture"] == gesture]


def test_a_broker_restarted_mid_run_loses_only_the_counted_overflow(tmp_path: Path) -> None:
    """Photos fed on stdin at ~20 fps; the broker stops (SIGTERM) after the first messages and comes
    back 1.5 s later. With a queue of 20 the run drops what overflows, counts it, reconnects, exits 0."""
    broker = Broker(tmp_path / "broker", persistent=True)
    try:
        sub = Subscriber(broker.port, ["ev"], client_id="test-subscriber")
        ev, summary = tmp_path / "ev.jsonl", tmp_path / "summary.json"
        proc = subprocess.Popen(cli("--source", "-", *STILLS, "--events", str(ev),
                                    "--events", broker.uri("ev") + "?queue=20", "--summary", str(summary)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        photos = [p.read_bytes() for p in sorted(SAMPLE.rglob("*.jpg"))]

        def feed(seconds: float) -> None:
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                proc.stdin.write(photos[i % len(photos)])  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                i += 1
                time.sleep(0.05)

        deadline = time.monotonic() + 30
        while len(sub.payloads("ev")) < 10 and time.monotonic() < deadline:
            feed(0.2)
        broker.stop()
        feed(1.5)
        broker.start()
        feed(3.5)
        out, err = proc.communicate(timeout=60)  # closes stdin: the end of the source
        assert proc.returncode == 0, err.decode()
        stderr = err.decode()
        assert "Traceback" not in stderr and "lost the broker" in stderr, stderr
        stats = json.loads(summary.read_text())["mqtt"]
        assert stats["reconnects"] >= 1 and stats["dropped"] > 0 and stats["unsent"] == 0, stats
        expected = lines(ev)
        sub.wait(lambda: len(first_seen(sub.payloads("ev"))) >= len(expected) - stats["dropped"])
        sub.close()
        received = first_seen(sub.payloads("ev"))
        assert stats["published"] == len(received) == len(expected) - stats["dropped"], stats
        kept = iter(expected)  # in order: the received events are the file's with the dropped ones left out
        assert all(any(r == e for e in kept) for r in received)
        assert f"dropped (queue full) {stats['dropped']}" in out.decode()
    finally:
        broker.stop()


def test_a_run_that_dies_is_offline_by_the_brokers_last_will(broker: Broker) -> None:
    sub = Subscriber(broker.port, ["hagrid-edge/lwt/availability"])
    proc = subprocess.Popen(cli("--source", "-", "--events", broker.uri("t"), "--homeassistant", "--ha-node-id", "lwt"),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sub.wait(lambda: sub.payloads("hagrid-edge/lwt/availability")[-1:] == ["online"], timeout=30)
        assert sub.payloads("hagrid-edge/lwt/availability")[-1:] == ["online"]
    finally:
        proc.kill()
        proc.wait()
    sub.wait(lambda: sub.payloads("hagrid-edge/lwt/availability")[-1:] == ["offline"], timeout=10)
    sub.close()
    assert sub.payloads("hagrid-edge/lwt/availability")[-1:] == ["offline"]


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 1) -> str:
    rc = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "running" not in line]
    assert rc == code and len(err) == 1 and "Traceback" not in err[0], (rc, err)
    return err[0]


def test_bad_events_uris_are_one_line_before_any_model_loads(broker: Broker, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The engine is not a model: an error about the URI shows it was checked before any model loaded."""
    (tmp_path / "not-a-model.onnx").write_bytes(b"not a model")
    base = ["run", "--engine", str(tmp_path / "not-a-model.onnx"), "--source", str(SAMPLE), "--headless"]
    closed = free_port()
    cases = {
        "ftp://host/x": "--events ftp://host/x: unknown scheme ftp://",
        "mqtt://no-such-broker.invalid/t": "the host no-such-broker.invalid does not resolve",
        f"mqtt://127.0.0.1:{closed}/t": f"cannot reach a broker at 127.0.0.1:{closed}",
        f"mqtt://127.0.0.1:{broker.port}": "no topic",
        f"mqtt://127.0.0.1:{broker.port}/a/#": "has a wildcard",
        broker.uri("t") + "?queue=0": "queue='0'",
    }
    for uri, reason in cases.items():
        line = one_error_line(capsys, [*base, "--events", uri])
        assert line.startswith("hagrid-edge run: error: --") and reason in line, line
    line = one_error_line(capsys, [*base, "--events", str(tmp_path / "ev.jsonl"), "--homeassistant"])
    assert "--homeassistant: needs exactly one --events mqtt://" in line
    assert not (tmp_path / "ev.jsonl").exists()


def test_credentials_from_the_environment_and_refused_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    broker = Broker(tmp_path / "broker", password=True)
    try:
        base = ["run", "--engine", ENGINE, "--source", str(SAMPLE), "--headless", "--max-frames", "2"]
        monkeypatch.setenv("HAGRID_EDGE_MQTT_PASSWORD", "wrong")
        line = one_error_line(capsys, [*base, "--events", broker.uri("t", USER)])
        assert "the broker refused the connection (Not authorized)" in line and "wrong" not in line, line
        monkeypatch.setenv("HAGRID_EDGE_MQTT_PASSWORD", PASSWORD)
        assert main([*base, "--events", broker.uri("t", USER), "--events", str(tmp_path / "ev.jsonl")]) == 0
        monkeypatch.delenv("HAGRID_EDGE_MQTT_PASSWORD")
        capsys.readouterr()
        # On the command line it works, with a warning, and is never shown.
        p = subprocess.run(cli("--source", str(SAMPLE), "--max-frames", "2",
                               "--events", broker.uri("t", f"{USER}:{PASSWORD}")),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "a password on the command line is visible" in p.stderr and f"{USER}:***@" in p.stderr
        assert PASSWORD not in p.stderr + p.stdout
    finally:
        broker.stop()


def test_without_paho_the_extra_is_named(tmp_path: Path) -> None:
    """paho-mqtt made unimportable (a package that raises ImportError first on the path)."""
    (tmp_path / "block" / "paho").mkdir(parents=True)
    (tmp_path / "block" / "paho" / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(ROOT)])}
    p = subprocess.run(cli("--source", str(SAMPLE), "--events", "mqtt://127.0.0.1:1/t"), env=env,
                       capture_output=True, text=True, timeout=60)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert "pip install 'hagrid-edge[mqtt]'" in err[0] and "Traceback" not in err[0]
