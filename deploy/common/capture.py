"""Capture in its own thread: newest frame only for live sources, every frame in order for files.

A live camera or stream that the consumer cannot keep up with must not build a queue (latency
grows without bound); it keeps one slot and a newer frame replaces an unread one (counted as
dropped). A file must not lose frames: a small bounded queue lets decoding run ahead of inference
and blocks when full. Lost live sources reopen with exponential back-off; corrupt frames are
skipped and counted; a live source whose read fails is logged, counted and reopened.

A live source is judged by the age of its frames, not by ``read()`` returning: a decoder can hand
over frames it held while the stream was frozen, seconds after they were shot (one per 5 s read
timeout). A frame more than ``STALE_S`` late (from its stream timestamp) is never handed over; if no
current frame came for ``STALE_S`` either, or a read returns nothing (its timeout, 5 s for streams),
the source is lost: a ``source_lost`` event, then reconnection; the first frame after it, ``source_back``.
Reconnections count once each, however many attempts they took; the time in between is outage.

Any other exception (a source failing in a way it does not report, during a reconnection too) stops
capture with ``failed`` set: the run then ends with an error, not as the end of the source.

Once started, the capture thread owns the source: only it closes it, after its last ``read()``
returned, so a stop never closes a device under a read in progress.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from hagrid_edge.deploy.common.sources import CorruptFrame, FrameSource
from hagrid_edge.errors import HagridEdgeError

log = logging.getLogger("hagrid_edge.run")

STALE_S = 2.0  # a live frame later than this is not current (well under the 5 s a stream read may wait)
# How fast the reference delay may creep up (s per s): follows camera/host clock drift (ppm), never a stall.
CLOCK_CREEP = 1e-3


@dataclass
class Frame:
    index: int  # order of arrival from the source (corrupt frames not counted)
    image: np.ndarray  # RGB uint8
    time: float  # wall clock when it was read
    capture_s: float  # seconds spent reading and decoding it
    age: float = 0.0  # live: seconds it was older at read than the source's freshest frames (0: not known)


@dataclass
class CaptureStats:
    read: int = 0
    dropped: int = 0  # live frames replaced by newer ones before inference took them
    corrupt: int = 0
    losses: int = 0  # times the live source was lost (ended, timed out, stale or failing)
    stale: int = 0  # live frames older than STALE_S when read (not handed over)
    reconnects: int = 0  # successful reopenings
    reconnect_attempts: int = 0  # reopenings tried, failed ones included
    read_errors: int = 0  # live reads that raised (driver or decoder failures)
    outage_s: float = 0.0  # from the last frame before each loss to the first one after it (ended outages)


@dataclass
class SourceEvent:
    """A live source was lost (``source_lost``) or delivers frames again (``source_back``)."""

    kind: str
    source: str
    frame: int  # lost: the last frame read before; back: the first frame after
    time: float  # wall clock
    reason: str = ""
    outage_s: float | None = None  # back: how long no current frame came

    def to_dict(self) -> dict:
        d = {"event": self.kind, "source": self.source, "frame": self.frame, "time": round(self.time, 3)}
        if self.reason:
            d["reason"] = self.reason
        if self.outage_s is not None:
            d["outage_s"] = round(self.outage_s, 3)
        return d


@dataclass
class StreamClock:
    """How late live frames are, from their stream timestamps: a frame's delay (wall clock at read
    minus stream time) against the smallest delay seen since the stream (re)opened. The reference
    may creep up by ``CLOCK_CREEP`` s per s, which follows clock drift but not a stall."""

    reference: float | None = None
    at: float = field(default=0.0)

    def age(self, stream_s: float | None, now: float) -> float:
        if stream_s is None:
            return 0.0
        delay = now - stream_s
        if self.reference is None or delay < self.reference:
            self.reference = delay
        else:
            self.reference = min(delay, self.reference + CLOCK_CREEP * (now - self.at))
        self.at = now
        return delay - self.reference

    def reset(self) -> None:
        self.reference = None


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

    def __len__(self) -> int:
        return len(self._items)


class Capture:
    """Reads ``source`` on a thread; ``get()`` hands frames over per the source's policy."""

    def __init__(self, source: FrameSource, queue_size: int = 4, backoff: tuple[float, float] = (0.5, 10.0),
                 stop_timeout: float = 1.5, stale_s: float = STALE_S) -> None:
        self.source = source
        self.buffer = FrameBuffer(1 if source.live else queue_size, drop_oldest=source.live)
        self.backoff, self.stop_timeout, self.stale_s = backoff, stop_timeout, stale_s
        self.stats = CaptureStats()
        self.error: str | None = None  # why the source stopped early, if it did
        self.failed = False  # ... by an error, not by its end: the run ends with an error too
        self.clock = StreamClock()
        self._events: list[SourceEvent] = []
        self._events_lock = threading.Lock()
        self._last_frame_at: float | None = None  # monotonic time of the newest current frame
        self._current_at = time.monotonic()  # ... or of the last (re)opening, if later
        self._lost_since: float | None = None  # monotonic start of the outage in progress
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
        interrupt = getattr(self.source, "interrupt", None)
        if interrupt is not None:  # a source that may block indefinitely (stdin) gives up its read
            interrupt()
        if not self._started:
            self.source.close()
            return
        self._thread.join(self.stop_timeout)
        if self._thread.is_alive():
            log.warning("%s: still inside a read after %.1f s; it is closed when that read returns",
                        self.source.uri, self.stop_timeout)

    @property
    def dropped(self) -> int:
        return self.buffer.dropped

    def take_events(self) -> list[SourceEvent]:
        """The source events since the last call, oldest first."""
        with self._events_lock:
            events, self._events = self._events, []
        return events

    def outage_s(self) -> float:
        """Outage time so far, including one still in progress."""
        ongoing = time.monotonic() - self._lost_since if self._lost_since is not None else 0.0
        return self.stats.outage_s + ongoing

    def _event(self, event: SourceEvent) -> None:
        with self._events_lock:
            self._events.append(event)

    def _run(self) -> None:
        try:
            self._read_loop()
        except Exception as e:  # a source failing in a way it does not report as lost or corrupt
            self.error = f"{self.source.uri}: {type(e).__name__}: {e}"
            self.failed = True
            log.error("%s: capture stopped by an unexpected error (%s: %s)", self.source.uri, type(e).__name__, e)
        finally:
            self.source.close()
            self.buffer.close()

    def _read_loop(self) -> None:
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
                    self.error = f"{self.source.uri}: read failed ({type(e).__name__}: {e})"
                    self.failed = True
                    break
                self.stats.read_errors += 1
                log.warning("%s: read failed (%s: %s); reopening it", self.source.uri, type(e).__name__, e)
                if not self._lost("read failed") or not self._reconnect():
                    break
                continue
            if image is None:
                if not self.source.live or not self._lost("no frame") or not self._reconnect():
                    break
                continue
            now = time.monotonic()
            age = self.clock.age(self.source.timestamp_s, now) if self.source.live else 0.0
            if age > self.stale_s:  # refused; a lost source if nothing current came for as long
                self.stats.stale += 1
                if now - self._current_at <= self.stale_s:
                    continue
                log.warning("%s: a frame %.1f s late and none current for %.1f s: the stream stalled",
                            self.source.uri, age, now - self._current_at)
                if not self._lost(f"frame {age:.1f} s late") or not self._reconnect():
                    break
                continue
            if self._lost_since is not None:
                self._back(now)
            self._last_frame_at = self._current_at = now
            frame = Frame(self.stats.read, image, time.time(), time.perf_counter() - t0, age)
            self.stats.read += 1
            if not self.buffer.put(frame):
                break

    def _lost(self, reason: str) -> bool:
        """Record a lost live source (outage from its last current frame); False if a stop came first."""
        if self._stop.is_set():
            return False
        self.stats.losses += 1
        self._lost_since = self._last_frame_at if self._last_frame_at is not None else time.monotonic()
        self._event(SourceEvent("source_lost", self.source.uri, self.stats.read - 1, time.time(), reason))
        return True

    def _back(self, now: float) -> None:
        """The first current frame after a loss ends the outage."""
        outage = now - self._lost_since  # type: ignore[operator]
        self.stats.outage_s += outage
        self._lost_since = None
        self._event(SourceEvent("source_back", self.source.uri, self.stats.read, time.time(), outage_s=outage))
        log.info("%s: frames again after %.1f s", self.source.uri, outage)

    def _reconnect(self) -> bool:
        """Reopen a lost live source, waiting longer after each failure (up to ``backoff[1]``, 10 s);
        False if stopped first. One success is one reconnect, however many attempts it took."""
        self.source.close()
        self.clock.reset()  # a new stream has its own clock
        delay = self.backoff[0]
        while not self._stop.is_set():
            log.warning("%s: lost; reconnecting in %.1f s", self.source.uri, delay)
            if self._stop.wait(delay):
                return False
            self.stats.reconnect_attempts += 1
            try:
                self.source.open()
            except HagridEdgeError as e:
                log.warning("%s", e)
                delay = min(delay * 2, self.backoff[1])
                continue
            self.stats.reconnects += 1
            self._current_at = time.monotonic()
            log.info("%s: reconnected", self.source.uri)
            return True
        return False
