"""``--output http://[HOST][:PORT]``: a live page served by the run itself.

One static page (``live_page.html``) and two streams, from the standard library's threading HTTP
server: ``/stream.mjpg``, the annotated video as MJPEG (``multipart/x-mixed-replace``, shown by an
``<img>`` in every browser), and ``/events``, Server-Sent Events: each gesture (or source) event as
it happens, the last ``BACKLOG`` to a page that opens, and the run's FPS and stage times each second.

The render thread only puts the frame into a buffer of one (the oldest dropped); an encoder thread
makes one JPEG of the newest frame for every viewer, and only while one is connected. Each viewer
gets the newest JPEG when its connection has taken the previous one, so a slow viewer skips frames
(counted, per viewer: the frames that came while it watched and were not sent to it) and never
slows the run or the other viewers. A viewer whose connection takes nothing for ``SOCKET_TIMEOUT_S``
is dropped.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from hagrid_edge.deploy.common.capture import FrameBuffer, SourceEvent
from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.deploy.common.output_uris import LiveStats, OutputTarget, bind_error, resolve
from hagrid_edge.errors import HagridEdgeError

log = logging.getLogger("hagrid_edge.run")

PAGE = Path(__file__).resolve().with_name("live_page.html")
JPEG_QUALITY = 80
BACKLOG = 20  # events a page that opens is sent at once
STATS_EVERY_S = 1.0
SOCKET_TIMEOUT_S = 10.0
BOUNDARY = b"hagrid-edge-frame"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer's connection never holds the run's exit
    page: LivePage


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT_S
    protocol_version = "HTTP/1.0"  # each response ends with its connection: streams have no length

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        page = self.server.page
        route = self.path.split("?", 1)[0]
        try:
            if route in ("/", "/index.html"):
                self._reply(200, "text/html; charset=utf-8", page.html)
            elif route == "/stream.mjpg":
                self._stream_video(page)
            elif route == "/events":
                self._stream_events(page)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")
        except OSError:  # the viewer left, or took nothing for SOCKET_TIMEOUT_S
            pass

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream_video(self, page: LivePage) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        # Each part is followed by the next boundary at once, so a browser shows it without waiting for the next.
        self.wfile.write(b"--" + BOUNDARY + b"\r\n")
        with page.viewer() as viewer:
            for jpeg in page.jpegs():
                self.wfile.write(b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg) + jpeg
                                 + b"\r\n--" + BOUNDARY + b"\r\n")
                viewer.sent += 1

    def _stream_events(self, page: LivePage) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        for kind, data in page.messages():
            self.wfile.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        log.debug("--output %s: %s", self.server.page.uri, format % args)


class _Viewer:
    """One connection to the video: frames that came while it watched (``offered_at`` on) and sent to it."""

    def __init__(self, offered_at: int) -> None:
        self.offered_at, self.sent = offered_at, 0


class LivePage:
    """The page's server, listening from construction until ``close``."""

    def __init__(self, target: OutputTarget, stats: LiveStats) -> None:
        self.uri, self._stats = target.uri, stats
        try:
            self.html = PAGE.read_bytes()
        except OSError as e:
            raise HagridEdgeError(f"--output {self.uri}: the page {PAGE} is missing ({e.strerror}); "
                                  "reinstall hagrid-edge") from None
        self._frames = FrameBuffer(1, drop_oldest=True)
        self._lock = threading.Lock()
        self._new_jpeg = threading.Condition(self._lock)
        self._new_event = threading.Condition(self._lock)
        self._jpeg, self._jpeg_seq = b"", 0
        self._events: collections.deque[tuple[int, dict]] = collections.deque(maxlen=BACKLOG)
        self._event_seq = 0
        self._offered = 0  # frames written while someone watched
        self._viewers: set[_Viewer] = set()
        self._sent_gone = self._dropped_gone = 0  # viewers that left
        self.peak_viewers = 0
        self._closing = threading.Event()
        address = resolve(target)
        try:
            self._server = _Server((address, target.port), _Handler)
        except OSError as e:
            raise bind_error(target, e) from None
        self._server.page = self
        self._threads = [threading.Thread(target=self._server.serve_forever, args=(0.25,), name="http-serve",
                                          daemon=True),
                         threading.Thread(target=self._encode, name="http-encode", daemon=True)]
        for t in self._threads:
            t.start()
        if address.startswith("127."):
            log.info("--output %s: live page at http://%s:%d/ (this machine only; http://0.0.0.0:%d serves "
                     "the network)", self.uri, address, target.port, target.port)
        else:
            shown = "<this machine>" if address == "0.0.0.0" else address
            log.info("--output %s: live page at http://%s:%d/ (listening on %s)", self.uri, shown, target.port,
                     "every interface" if address == "0.0.0.0" else address)

    # ---- the run's side ----------------------------------------------------------------------------
    def wants_frames(self) -> bool:
        return bool(self._viewers)

    def write(self, bgr: np.ndarray) -> None:
        """Hand over the newest frame (never waits); counted for the viewers watching now."""
        if not self._viewers:
            return
        with self._lock:
            self._offered += 1
        self._frames.put(bgr)

    def publish(self, event: GestureEvent | SourceEvent) -> None:
        data = event.to_dict()
        with self._lock:
            self._event_seq += 1
            self._events.append((self._event_seq, data))
            self._new_event.notify_all()

    def stats(self) -> dict:
        """Frames sent to viewers and frames they missed (a slow viewer's skipped ones), all viewers summed."""
        with self._lock:
            sent = self._sent_gone + sum(v.sent for v in self._viewers)
            dropped = self._dropped_gone + sum(self._missed(v) for v in self._viewers)
        return {"frames_sent": sent, "frames_dropped": dropped, "viewers_peak": self.peak_viewers}

    def close(self) -> None:
        self._closing.set()
        self._frames.close()
        with self._lock:
            self._new_jpeg.notify_all()
            self._new_event.notify_all()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join()

    # ---- the server's side -------------------------------------------------------------------------
    def _missed(self, viewer: _Viewer) -> int:
        return max(0, self._offered - viewer.offered_at - viewer.sent)

    @contextlib.contextmanager
    def viewer(self) -> Iterator[_Viewer]:
        with self._lock:
            viewer = _Viewer(self._offered)
            self._viewers.add(viewer)
            self.peak_viewers = max(self.peak_viewers, len(self._viewers))
        try:
            yield viewer
        finally:
            with self._lock:
                self._viewers.discard(viewer)
                self._sent_gone += viewer.sent
                self._dropped_gone += self._missed(viewer)

    def _encode(self) -> None:
        """One JPEG of the newest frame at a time, while anyone watches."""
        while True:
            bgr = self._frames.get()
            if bgr is None:
                return
            if not self._viewers:
                continue
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                continue
            with self._lock:
                self._jpeg, self._jpeg_seq = buf.tobytes(), self._jpeg_seq + 1
                self._new_jpeg.notify_all()

    def jpegs(self) -> Iterator[bytes]:
        """The newest JPEG each time there is one newer than the last taken, until the run ends."""
        seen = 0
        while True:
            with self._lock:
                self._new_jpeg.wait_for(lambda seen=seen: self._jpeg_seq > seen or self._closing.is_set())
                if self._closing.is_set():
                    return
                jpeg, seen = self._jpeg, self._jpeg_seq
            yield jpeg

    def messages(self) -> Iterator[tuple[str, dict]]:
        """Events as they come (the recent ones first) and the run's figures every second, until it ends."""
        seen, next_stats = 0, time.monotonic()
        while not self._closing.is_set():
            if time.monotonic() >= next_stats:
                next_stats += STATS_EVERY_S
                yield "stats", {**self._stats(), **self.stats(), "viewers": len(self._viewers)}
            with self._lock:
                self._new_event.wait_for(lambda seen=seen: (self._events and self._events[-1][0] > seen)
                                         or self._closing.is_set(), timeout=max(0.0, next_stats - time.monotonic()))
                new = [(n, e) for n, e in self._events if n > seen]
            for n, data in new:
                seen = n
                yield "gesture", data
