"""What ``--events mqtt://...`` costs the run loop, and how late a subscriber hears of a gesture.

A local Mosquitto broker (started here on a free loopback port, or ``--broker HOST:PORT``), the
shipped sample (``assets/hagrid-sample``, each photo held ``--hold`` frames, letterboxed to 640x480)
played at 30 fps by a paced source into the real run loop with the shipped one-stage detector and the
video debounce, the events going both to a file and to MQTT (QoS 1). A paho subscriber in this
process receives them. Per event:

- publish cost: the time the run loop spends in each sink's ``write`` (the file's for reference);
- delay, event to subscriber: from the run loop handing the event to the MQTT sink to the
  subscriber receiving it (client, broker, subscriber);
- delay, frame to subscriber: from the frame where the gesture starts (or ends) being captured to
  the subscriber receiving the event: that frame's inference, tracking and debounce included.

    python benchmarks/bench_mqtt.py [--seconds 30] [--hold 10] [--threads 2] [--broker HOST:PORT] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from hagrid_edge.deploy.common import runner
from hagrid_edge.deploy.common.event_sinks import EventSink, open_events
from hagrid_edge.deploy.common.runner import RunOptions, run_loop
from hagrid_edge.images import read_rgb
from hagrid_edge.paths import DEFAULT_MODELS
from hagrid_edge.pipeline import load_pipeline
from hagrid_edge.processing import letterbox

ROOT = Path(__file__).resolve().parents[1]
SIZE = (640, 480)
TOPIC = "bench/hagrid-edge/events"


class PacedSample:
    """The sample photos as a 30 fps camera would deliver them: frame i not before start + i / fps."""

    live = False
    timestamp_s = None

    def __init__(self, frames: list[np.ndarray], hold: int, fps: float, seconds: float) -> None:
        self.uri = f"assets/hagrid-sample at {fps:g} fps"
        self.frames, self.hold, self.fps = frames, hold, fps
        self.total = int(seconds * fps)
        self._i, self._t0 = 0, 0.0

    def open(self) -> None:
        self._i, self._t0 = 0, time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._i >= self.total:
            return None
        wait = self._t0 + self._i / self.fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        frame = self.frames[(self._i // self.hold) % len(self.frames)]
        self._i += 1
        return frame

    def close(self) -> None:
        pass


class Timed:
    """A sink that records, per event, the wall time it was handed over and the seconds ``write`` took."""

    def __init__(self, sink: EventSink) -> None:
        self.sink, self.name = sink, sink.name
        self.handed: dict[str, float] = {}  # event JSON -> wall time
        self.cost: list[float] = []

    def write(self, event) -> None:  # noqa: ANN001 (GestureEvent | SourceEvent)
        self.handed[json.dumps(event.to_dict())] = time.time()
        t0 = time.perf_counter()
        self.sink.write(event)
        self.cost.append(time.perf_counter() - t0)

    def close(self) -> None:
        self.sink.close()

    def __getattr__(self, name: str):  # noqa: ANN204 (the MQTT sink's stats and pending)
        return getattr(self.sink, name)


@contextmanager
def mosquitto(folder: Path) -> Iterator[int]:
    """A Mosquitto broker on a free loopback port for the block; yields the port."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{exe} did not start on port {port}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def subscribe(host: str, port: int) -> tuple[mqtt.Client, dict[str, float]]:
    """A subscriber on ``TOPIC``; the dict maps each payload to the wall time it arrived."""
    received: dict[str, float] = {}
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = lambda _c, _u, msg: received.setdefault(msg.payload.decode(), time.time())
    client.connect(host, port)
    client.loop_start()
    if not ready.wait(5):
        raise SystemExit(f"no SUBACK from {host}:{port}")
    return client, received


def row(name: str, seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1e3
    return (f"{name:34s}{np.percentile(ms, 50):9.3f}{np.percentile(ms, 99):9.3f}{ms.mean():9.3f}{ms.max():9.3f}"
            f"{len(ms):7d}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default=str(DEFAULT_MODELS / "gesture_detector.onnx"))
    p.add_argument("--images", default=str(ROOT / "assets/hagrid-sample"), help="folder of photos")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the paced run")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--hold", type=int, default=10, help="frames each photo is shown")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--broker", metavar="HOST:PORT", help="an existing broker (default: start mosquitto here)")
    p.add_argument("--json", help="write the figures here")
    return p.parse_args()


def bench(args: argparse.Namespace, host: str, port: int, tmp: Path) -> dict:
    images = sorted(Path(args.images).rglob("*.jpg"))
    frames = [letterbox(read_rgb(p), *SIZE, pad_value=0, interpolation=cv2.INTER_AREA)[0] for p in images]
    pipeline = load_pipeline(args.engine, threads=args.threads)
    for frame in frames[:3]:  # warm-up
        pipeline(frame)
    client, received = subscribe(host, port)
    sinks: dict[str, Timed] = {}

    def timed_open(uri: str, homeassistant=None) -> Timed:  # noqa: ANN001
        sinks["mqtt" if uri.startswith("mqtt://") else "file"] = Timed(open_events(uri, homeassistant))
        return sinks["mqtt" if uri.startswith("mqtt://") else "file"]

    runner.open_events = timed_open  # the run loop opens its sinks through this name
    opts = RunOptions(events=[str(tmp / "ev.jsonl"), f"mqtt://{host}:{port}/{TOPIC}"])
    source = PacedSample(frames, args.hold, args.fps, args.seconds)
    source.open()
    summary = run_loop(pipeline, source, opts, threading.Event())
    deadline = time.monotonic() + 5
    while len(received) < len(sinks["mqtt"].handed) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    mqtt_sink = sinks["mqtt"]
    missing = [e for e in mqtt_sink.handed if e not in received]
    to_sub = [received[e] - t for e, t in mqtt_sink.handed.items() if e in received]
    from_frame = [received[e] - json.loads(e)["time"] for e in mqtt_sink.handed if e in received]
    print(f"{summary.frames} frames at {summary.fps:.1f} FPS ({args.fps:g} paced) from {len(images)} photos held "
          f"{args.hold} frames; {args.engine}; {args.threads} threads; broker {host}:{port}")
    print(f"{len(mqtt_sink.handed)} events, {len(missing)} not received; {mqtt_sink.stats}\n")
    print(f"{'per event, ms':34s}{'p50':>9s}{'p99':>9s}{'mean':>9s}{'max':>9s}{'n':>7s}")
    print(row("publish cost in the loop, mqtt", mqtt_sink.cost))
    print(row("write cost in the loop, file", sinks["file"].cost))
    print(row("event handed over -> subscriber", to_sub))
    print(row("frame captured -> subscriber", from_frame))
    pct = lambda v, q: float(np.percentile(np.asarray(v) * 1e3, q))  # noqa: E731
    return {"frames": summary.frames, "fps": summary.fps, "events": len(mqtt_sink.handed), "missing": len(missing),
            "mqtt": dataclasses.asdict(mqtt_sink.stats), "engine": args.engine, "threads": args.threads,
            **{f"{name}_ms_{stat}": pct(values, q) for name, values in (
                ("publish", mqtt_sink.cost), ("file_write", sinks["file"].cost), ("event_to_subscriber", to_sub),
                ("frame_to_subscriber", from_frame)) for stat, q in (("p50", 50), ("p99", 99))}}


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.broker:
            host, _, port = args.broker.rpartition(":")
            figures = bench(args, host, int(port), Path(tmp))
        else:
            with mosquitto(Path(tmp)) as port:
                figures = bench(args, "127.0.0.1", port, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
