"""The run loop: capture, inference and rendering overlap on three threads.

capture thread -> (newest frame / bounded queue) -> main thread: pre, infer, post, track, events
-> (bounded queue) -> render thread: draw, write the video, show the window.

The main thread stops at the end of a file, when ``stop`` is set (SIGINT/SIGTERM, the window's
``q``), or after ``max_frames``; it then finishes the frame in hand, ends the open gestures,
drains the render queue and closes every output, and returns a ``Summary``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from hagrid_edge.deploy.common.capture import Capture, FrameBuffer
from hagrid_edge.deploy.common.debounce import DebounceConfig, Debouncer, GestureEvent
from hagrid_edge.deploy.common.outputs import (
    STAGES,
    EventsOutput,
    Hooks,
    VideoOutput,
    annotate,
    check_video_path,
)
from hagrid_edge.deploy.common.sources import FrameSource
from hagrid_edge.deploy.common.tracker import IouTracker
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import atomic_path
from hagrid_edge.pipeline import StageTimes
from hagrid_edge.processing import Detections

log = logging.getLogger("hagrid_edge.run")

WINDOW = "hagrid-edge"
PERCENTILES = (50, 90, 99)


class Pipeline(Protocol):
    last_times: StageTimes

    def __call__(self, frame: np.ndarray) -> Detections: ...


@dataclass
class RunOptions:
    debounce: DebounceConfig = field(default_factory=DebounceConfig)
    track_iou: float = 0.3
    track_max_age: int = 5
    output: str | None = None  # annotated video
    events: str | None = None  # JSONL file, or "-" for stdout
    hooks: list[str] = field(default_factory=list)
    show: bool = False  # on-screen window
    output_fps: float | None = None  # default: the source's, else 30
    max_frames: int | None = None
    queue_size: int = 4


@dataclass
class Summary:
    source: str
    frames: int = 0
    wall_s: float = 0.0
    stopped_by: str = "end of source"
    corrupt: int = 0
    dropped: int = 0
    reconnects: int = 0
    events: list[dict] = field(default_factory=list)
    video_frames: int = 0
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in (*STAGES, "latency")})

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def percentiles_ms(self) -> dict[str, dict[str, float]]:
        """Per stage: p50/p90/p99/mean in milliseconds (stages with no samples left out)."""
        out = {}
        for stage, values in self.times.items():
            if values:
                ms = np.asarray(values) * 1e3
                out[stage] = {**{f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES},
                              "mean": float(ms.mean())}
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "frames": self.frames, "wall_s": round(self.wall_s, 3),
                "fps": round(self.fps, 2), "stopped_by": self.stopped_by, "corrupt_frames": self.corrupt,
                "dropped_frames": self.dropped, "reconnect_attempts": self.reconnects,
                "events": len(self.events), "video_frames": self.video_frames,
                "stage_ms": {k: {m: round(v, 3) for m, v in d.items()} for k, d in self.percentiles_ms().items()}}

    def format(self) -> str:
        starts = Counter(e["gesture"] for e in self.events if e["event"] == "start")
        lines = [f"{self.source}: {self.frames} frames in {self.wall_s:.2f} s = {self.fps:.1f} FPS "
                 f"(stopped by {self.stopped_by})",
                 f"  corrupt frames skipped {self.corrupt}, live frames dropped {self.dropped}, "
                 f"reconnect attempts {self.reconnects}",
                 f"  gesture events {len(self.events)}: "
                 + (", ".join(f"{g} x{n}" for g, n in starts.most_common()) or "none")]
        table = self.percentiles_ms()
        if table:
            lines.append(f"  {'stage ms':10s}" + "".join(f"{h:>9s}" for h in ("p50", "p90", "p99", "mean")))
            for stage, row in table.items():
                lines.append(f"  {stage:10s}" + "".join(f"{row[h]:9.2f}" for h in ("p50", "p90", "p99", "mean")))
        return "\n".join(lines)


class Gestures:
    """Tracker + one debouncer per track: detections of each frame -> gesture events."""

    def __init__(self, opts: RunOptions) -> None:
        self.tracker = IouTracker(opts.track_iou, opts.track_max_age)
        self.config = opts.debounce
        self.debouncers: dict[int, Debouncer] = {}

    def update(self, dets: Detections, frame: int, now: float) -> tuple[list[int], list[GestureEvent]]:
        ids, lost = self.tracker.update(dets.boxes)
        events: list[GestureEvent] = []
        seen = dict(zip(ids, range(len(ids)), strict=True))
        for track in self.tracker.tracks:
            deb = self.debouncers.setdefault(track.id, Debouncer(track.id, self.config))
            i = seen.get(track.id)
            if i is None:
                events += deb.update(None, 0.0, None, frame, now)
            else:
                events += deb.update(dets.labels[i], float(dets.scores[i]), dets.boxes[i], frame, now)
        for track in lost:
            deb = self.debouncers.pop(track.id, None)
            if deb is not None:
                events += deb.finish(frame, now)
        return ids, events

    def finish(self, frame: int, now: float) -> list[GestureEvent]:
        events = [e for deb in self.debouncers.values() for e in deb.finish(frame, now)]
        self.debouncers.clear()
        return events


@dataclass
class _RenderItem:
    image: np.ndarray
    dets: Detections
    ids: list[int]
    fps: float
    stage_ms: dict[str, float]


class Renderer:
    """Draws, writes and shows frames on its own thread, in order, with a small bounded queue."""

    def __init__(self, video: VideoOutput | None, show: bool, stop: threading.Event, queue_size: int) -> None:
        self.video, self.show, self.stop = video, show, stop
        self.buffer = FrameBuffer(queue_size, drop_oldest=False)
        self.times: list[float] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="render", daemon=True)
        self._thread.start()

    def submit(self, item: _RenderItem) -> None:
        if self.error is not None:
            raise self.error
        self.buffer.put(item)

    def close(self) -> None:
        self.buffer.close()
        self._thread.join()
        if self.show:
            cv2.destroyAllWindows()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (item := self.buffer.get()) is not None:
            assert isinstance(item, _RenderItem)
            t0 = time.perf_counter()
            try:
                bgr = annotate(item.image, item.dets, item.ids, item.fps, item.stage_ms)
                if self.video is not None:
                    self.video.write(bgr)
                if self.show:
                    cv2.imshow(WINDOW, bgr)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        self.stop.set()
            except BaseException as e:  # handed to the main thread, which raises it
                self.error = e
                self.stop.set()
                self.buffer.close()
                return
            self.times.append(time.perf_counter() - t0)


def run_loop(pipeline: Pipeline, source: FrameSource, opts: RunOptions, stop: threading.Event,
             stop_reason: list[str] | None = None) -> Summary:
    """Run ``pipeline`` on every frame ``source`` hands over until it ends or ``stop`` is set.

    ``source`` must be open. ``stop_reason`` (e.g. ``["SIGINT"]``), filled by whoever sets ``stop``,
    goes into the summary.
    """
    summary = Summary(source.uri)
    if opts.output:
        check_video_path(opts.output)
    with contextlib.ExitStack() as stack:
        stack.callback(source.close)  # also when an output fails to open before capture starts
        video = None
        if opts.output:
            tmp = stack.enter_context(atomic_path(opts.output))
            video = VideoOutput(opts.output, tmp, opts.output_fps or source.fps or 30.0)
            stack.callback(video.close)
        events_out = None
        if opts.events == "-":
            events_out = EventsOutput(sys.stdout)
        elif opts.events:
            tmp = stack.enter_context(atomic_path(opts.events))
            events_out = EventsOutput(stack.enter_context(open(tmp, "w", encoding="utf-8")))
        hooks = Hooks(opts.hooks)
        stack.callback(hooks.close)
        renderer = Renderer(video, opts.show, stop, opts.queue_size) if video or opts.show else None
        if renderer is not None:
            stack.callback(renderer.close)
        capture = Capture(source, opts.queue_size).start()
        stack.callback(capture.stop)
        gestures = Gestures(opts)

        def emit(events: list[GestureEvent]) -> None:
            for event in events:
                summary.events.append(event.to_dict())
                if events_out is not None:
                    events_out.write(event)
                hooks.fire(event)

        times = summary.times
        t_start = time.perf_counter()
        fps, last = 0.0, t_start
        index = -1
        while not stop.is_set():
            try:  # wake up now and then: a lost camera delivers nothing, yet a stop request must be seen
                frame = capture.get(timeout=0.25)
            except TimeoutError:
                continue
            if frame is None:
                break
            index = frame.index
            dets = pipeline(frame.image)
            st = pipeline.last_times
            t0 = time.perf_counter()
            ids, events = gestures.update(dets, frame.index, frame.time)
            emit(events)
            t1 = time.perf_counter()
            for stage, value in (("capture", frame.capture_s), ("pre", st.pre), ("infer", st.infer),
                                 ("post", st.post), ("track", t1 - t0)):
                times[stage].append(value)
            times["latency"].append(time.time() - frame.time)
            dt, last = t1 - last, t1
            fps = 1.0 / dt if fps == 0.0 else 0.9 * fps + 0.1 / max(dt, 1e-9)
            summary.frames += 1
            if renderer is not None:
                stage_ms = {"cap": frame.capture_s * 1e3, "pre": st.pre * 1e3, "inf": st.infer * 1e3,
                            "post": st.post * 1e3}
                renderer.submit(_RenderItem(frame.image, dets, ids, fps, stage_ms))
            if opts.max_frames and summary.frames >= opts.max_frames:
                summary.stopped_by = f"--max-frames {opts.max_frames}"
                break
        if stop.is_set():
            summary.stopped_by = stop_reason[0] if stop_reason else "stop request"
        capture.stop()
        if summary.frames == 0 and not stop.is_set():  # raised inside the block: no empty outputs are kept
            raise HagridEdgeError(f"--source {source.uri}: no frame could be decoded "
                                  f"({capture.stats.corrupt} corrupt){f'; {capture.error}' if capture.error else ''}")
        emit(gestures.finish(index, time.time()))
    # Leaving the block drained the render queue and closed (renamed into place) every output.
    summary.wall_s = time.perf_counter() - t_start
    if capture.error:
        log.warning("%s", capture.error)
    summary.corrupt = capture.stats.corrupt
    summary.dropped = capture.dropped
    summary.reconnects = capture.stats.reconnects
    if renderer is not None:
        times["render"] = renderer.times
    summary.video_frames = video.frames if video is not None else 0
    return summary
