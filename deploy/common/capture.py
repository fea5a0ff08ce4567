"""Capture in its own thread: newest frame only for live sources, every frame in order for files.

A live camera or stream that the consumer cannot keep up with must not build a queue (latency
grows without bound); it keeps one slot and a newer frame replaces an unread one (counted as
dropped). A file must not lose frames: a small bounded queue lets decoding run ahead of inference
and blocks when full. Lost live sources reopen with exponential back-off; corrupt frames are
skipped and counted; a live source whose read fails is logged, counted and reopened.

Once started, the capture thread owns the source: only it closes it, after its last ``read()``
returned, so a stop never closes a device under a read in progress.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from hagrid_edge.deploy.common.sources import CorruptFrame, FrameSource
from hagrid_edge.errors import HagridEdgeError

log = logging.getLogger("hagrid_edge.run")


@dataclass
class Frame:
    index: int  # order of arrival from the source (corrupt frames not counted)
    image: np.ndarray  # RGB uint8
    time: float  # wall clock when it was read
    capture_s: float  # seconds spent reading and decoding it


@dataclass
class CaptureStats:
    read: int = 0
    dropped: int = 0  # live frames replaced by newer ones before inference took them
    corrupt: int = 0
    reconnects: int = 0
    read_errors: int = 0  # live reads that raised (driver or decoder failures)


class FrameBuffer:
    """A bounded hand-over between two threads: block when full, or drop the oldest (live)."""

    def __init__(self, capacity: int, drop_oldest: bool) -> None:
        self.capacity, self.drop_oldest = capacity, drop_oldest
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: object) -> bool:
        """Add ``item``; False if the buffer was closed meanwhile."""
        with self._cond:
            while len(self._items) >= self.capacity and not self.drop_oldest and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> object | None:
        """The oldest item; None once closed and drained; ``TimeoutError`` if none came in ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise TimeoutError
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Capture:
    """Reads ``source`` on a thread; ``get()`` hands frames over per the source's policy."""

    def __init__(self, source: FrameSource, queue_size: int = 4, backoff: tuple[float, float] = (0.5, 10.0),
                 stop_timeout: float = 5.0) -> None:
        self.source = source
        self.buffer = FrameBuffer(1 if source.live else queue_size, drop_oldest=source.live)
        self.backoff, self.stop_timeout = backoff, stop_timeout
        self.stats = CaptureStats()
        self.error: str | None = None  # why a file source stopped early, if it did
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._started = False

    def start(self) -> Capture:
        self._started = True
        self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None when the source has ended or capture was stopped (``TimeoutError``: none yet)."""
        return self.buffer.get(timeout)  # type: ignore[return-value]

    def stop(self) -> None:
        """Stop reading and wait for the thread, which closes the source (closed here if never started)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.buffer.close()
        if not self._started:
            self.source.close()
            return
        self._thread.join(self.stop_timeout)
        if self._thread.is_alive():
            log.warning("%s: still inside a read after %.0f s; it is closed when that read returns",
                        self.source.uri, self.stop_timeout)

    @property
    def dropped(self) -> int:
        return self.buffer.dropped

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    image = self.source.read()
                except CorruptFrame as e:
                    self.stats.corrupt += 1
                    log.warning("skipped a corrupt frame: %s", e)
                    continue
                except Exception as e:  # a driver or decoder failure mid-stream
                    if not self.source.live:
                        self.error = f"{self.source.uri}: read failed ({e})"
                        break
                    self.stats.read_errors += 1
                    log.warning("%s: read failed (%s: %s); reopening it", self.source.uri, type(e).__name__, e)
                    image = None
                if image is None:
                    if not self.source.live or not self._reconnect():
                        break
                    continue
                frame = Frame(self.stats.read, image, time.time(), time.perf_counter() - t0)
                self.stats.read += 1
                if not self.buffer.put(frame):
                    break
        finally:
            self.source.close()
            self.buffer.close()

    def _reconnect(self) -> bool:
        """Reopen a lost live source, waiting longer after each failure; False if stopped first."""
        self.source.close()
        delay = self.backoff[0]
        while not self._stop.is_set():
            self.stats.reconnects += 1
            log.warning("%s: lost; reconnecting in %.1f s", self.source.uri, delay)
            if self._stop.wait(delay):
                return False
            try:
                self.source.open()
                log.info("%s: reconnected", self.source.uri)
                return True
            except HagridEdgeError as e:
                log.warning("%s", e)
                delay = min(delay * 2, self.backoff[1])
        return False
