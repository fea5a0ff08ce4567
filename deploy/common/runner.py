"""The run loop: capture -> infer -> track/debounce -> render/emit -> stats, one named step each.

Threads: capture (``capture.py``: newest frame for live sources, a bounded queue for files) ->
main thread (the models, the tracker, events, hooks, the window) -> render thread (``render.py``:
draw, write the video). The loop stops at the end of a file, when ``stop`` is set (SIGINT/SIGTERM,
the window's ``q``), or after ``max_frames``; it then ends the open gestures, drains the render
queue and closes every output: the video is renamed into place, then hooks get ``SHUTDOWN_GRACE_S``
(1 s) before their process groups are killed. Events reach their file as they happen, so nothing
reported is lost however the run ends; a run that fails (a model error, a full disk, a source that
fails) raises after closing its outputs, keeping the events and the video so far. A live source
that is lost ends the open gestures at once, with a ``source_lost`` event before their ends. Statistics live in the ``Summary`` it returns; with
``status_every`` a one-line JSON status (counts, queue lengths, memory) is logged that often.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from hagrid_edge.deploy.common.capture import Capture, Frame, SourceEvent
from hagrid_edge.deploy.common.debounce import DebounceConfig, GestureEvent
from hagrid_edge.deploy.common.event_sinks import EventSink, open_events
from hagrid_edge.deploy.common.gestures import Gestures, one_per_hand
from hagrid_edge.deploy.common.homeassistant import HomeAssistant
from hagrid_edge.deploy.common.hooks import HOOK_TIMEOUT_S, MAX_RUNNING, Hooks
from hagrid_edge.deploy.common.mqtt_events import MqttEvents, MqttStats
from hagrid_edge.deploy.common.output_uris import NetworkOutput, open_output, parse_outputs
from hagrid_edge.deploy.common.outputs import VideoOutput
from hagrid_edge.deploy.common.render import Renderer, RenderItem, Window
from hagrid_edge.deploy.common.sources import FrameSource
from hagrid_edge.deploy.common.summary import Summary
from hagrid_edge.errors import HagridEdgeError, first_line
from hagrid_edge.landmarks import HandLandmarks, Landmarker
from hagrid_edge.pipeline import StageTimes
from hagrid_edge.processing import Detections

log = logging.getLogger("hagrid_edge.run")

POLL_S = 0.25  # a lost camera delivers nothing, yet stop requests and the window must be seen this often


class Pipeline(Protocol):
    last_times: StageTimes

    def __call__(self, frame: np.ndarray) -> Detections: ...


@dataclass
class RunOptions:
    debounce: DebounceConfig = field(default_factory=DebounceConfig)
    track_iou: float = 0.3
    same_hand_iou: float = 0.5  # boxes overlapping more are one hand: the likeliest gesture stays
    track_max_age: int = 5
    output: str | list[str] | None = None  # annotated video file and/or stream URIs (output_uris.py)
    events: str | list[str] | None = None  # JSONL file, "-" for stdout, mqtt://...; one or a list
    homeassistant: HomeAssistant | None = None  # discovery messages on the mqtt:// events URI
    hooks: list[str] = field(default_factory=list)
    show: bool = False  # on-screen window
    output_fps: float | None = None  # default: the source's, else 30
    max_frames: int | None = None
    queue_size: int = 4
    status_every: float | None = None  # seconds between status lines in the log
    hook_timeout: float = HOOK_TIMEOUT_S  # seconds each hook call may run
    max_hooks: int = MAX_RUNNING  # hook calls running at once


class Models:
    """The detection pipeline and, if given, the landmark stage on every detected hand."""

    def __init__(self, pipeline: Pipeline, same_hand_iou: float, landmarker: Landmarker | None = None) -> None:
        self.pipeline, self.landmarker, self.same_hand_iou = pipeline, landmarker, same_hand_iou

    def __call__(self, image: np.ndarray, summary: Summary) -> tuple[Detections, HandLandmarks | None]:
        dets = one_per_hand(self.pipeline(image), self.same_hand_iou)
        summary.add_times(self.pipeline.last_times)
        if self.landmarker is None:
            return dets, None
        hands = self.landmarker(image, dets.boxes)
        summary.add("landmarks", self.landmarker.last_times.total)
        return dets, hands


class Outputs:
    """Everything a run writes: events (files, stdout, MQTT), hooks, the annotated video and the window.

    Events reach their file as they happen; the video is renamed into place when ``stack`` closes,
    whether the run ended well or not (``VideoOutput``); hooks are closed last, within their bound.
    """

    def __init__(self, stack: contextlib.ExitStack, opts: RunOptions, source_fps: float | None,
                 stop: threading.Event, summary: Summary) -> None:
        self.summary = summary
        self.hooks = Hooks(opts.hooks, opts.hook_timeout, opts.max_hooks)  # checked before any file is made
        stack.callback(self.hooks.close)  # last to close: the files are in place before hooks are waited for
        self.sinks = []  # video files and servers (RTSP, the live page), in --output order
        for target in parse_outputs(opts.output):
            self.sinks.append(open_output(target, opts.output_fps or source_fps or 30.0, summary.live))
            stack.callback(self.sinks[-1].close)
        self.video = next((s for s in self.sinks if isinstance(s, VideoOutput)), None)
        self.network: list[NetworkOutput] = [s for s in self.sinks if not isinstance(s, VideoOutput)]  # type: ignore[misc]
        self.events: list[EventSink] = []
        for uri in [opts.events] if isinstance(opts.events, str) else opts.events or []:
            self.events.append(open_events(uri, opts.homeassistant))
            stack.callback(self.events[-1].close)
        self.window = Window(stop) if opts.show else None
        if self.window is not None:
            stack.callback(self.window.close)
        self.renderer = None
        if self.sinks or self.window is not None:
            self.renderer = Renderer(self.sinks, self.window, stop, opts.queue_size, summary.stages["render"])
            stack.callback(self.renderer.close)

    def emit(self, events: list[GestureEvent | SourceEvent]) -> None:
        self.summary.count_events(events)
        for event in events:
            for sink in self.events:
                sink.write(event)
            for server in self.network:  # the live page shows them
                server.publish(event)
            self.hooks.fire(event)

    def render(self, frame: Frame, dets: Detections, ids: list[int], hands: HandLandmarks | None) -> None:
        if self.renderer is not None:
            self.renderer.submit(RenderItem(frame.image, dets, ids, hands, self.summary.fps_now,
                                            dict(self.summary.last_ms)))

    def poll_window(self) -> None:
        if self.window is not None:
            self.window.poll()

    def queues(self) -> dict[str, int]:
        """Items waiting in the output queues (render, hooks, and events for MQTT if any)."""
        mqtt = [s.pending for s in self.events if isinstance(s, MqttEvents)]
        return {"render": len(self.renderer.buffer) if self.renderer is not None else 0,
                "hooks": self.hooks.pending, **({"mqtt": sum(mqtt)} if mqtt else {})}

    def mqtt_stats(self) -> MqttStats | None:
        """The MQTT sinks' counters, summed; None without one."""
        sinks = [s for s in self.events if isinstance(s, MqttEvents)]
        if not sinks:
            return None
        total = MqttStats()
        for sink in sinks:
            total.add(sink.stats)
        return total


class Watch:
    """What the loop does between frames too: source events (a lost source ends the open gestures),
    the window, and the periodic status line."""

    def __init__(self, capture: Capture, gestures: Gestures, outputs: Outputs, summary: Summary,
                 status_every: float | None) -> None:
        self.capture, self.gestures, self.outputs, self.summary = capture, gestures, outputs, summary
        self.status_every = status_every
        self._next_status = time.monotonic() + (status_every or 0.0)

    def __call__(self) -> None:
        self.outputs.poll_window()
        for event in self.capture.take_events():
            self.outputs.emit([event])
            if event.kind == "source_lost":
                self.outputs.emit(self.gestures.finish(event.frame, event.time))
        if self.status_every and time.monotonic() >= self._next_status:
            self._next_status += self.status_every
            queues = {"capture": len(self.capture.buffer), **self.outputs.queues()}
            log.info("status %s", json.dumps(self.summary.status(queues)))


def next_frame(capture: Capture, stop: threading.Event, watch: Watch) -> Frame | None:
    """The next frame; None once the source ended or a stop was requested. Watches while it waits."""
    while not stop.is_set():
        watch()
        try:
            return capture.get(timeout=POLL_S)
        except TimeoutError:
            continue
    return None


def run_loop(pipeline: Pipeline, source: FrameSource, opts: RunOptions, stop: threading.Event,
             stop_reason: list[str] | None = None, landmarker: Landmarker | None = None,
             summary: Summary | None = None) -> Summary:
    """Run the models on every frame ``source`` hands over until it ends or ``stop`` is set.

    ``source`` must be open; it is closed on return. ``stop_reason`` (e.g. ``["SIGINT"]``), filled by
    whoever sets ``stop``, goes into the summary. A run that fails raises after closing its outputs
    (the events and video so far are kept); ``summary``, if given, then says so in ``stopped_by``.
    """
    parse_outputs(opts.output)  # a bad --output is refused before anything opens
    summary = summary if summary is not None else Summary(source.uri)
    models = Models(pipeline, opts.same_hand_iou, landmarker)
    gestures = Gestures(opts.debounce, opts.track_iou, opts.track_max_age)
    capture = Capture(source, opts.queue_size)
    outputs: Outputs | None = None
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(capture.stop)  # closes the source, also if an output fails to open
            outputs = Outputs(stack, opts, source.fps, stop, summary)
            watch = Watch(capture, gestures, outputs, summary, opts.status_every)
            capture.start()
            last_index = -1
            while True:
                frame = next_frame(capture, stop, watch)  # capture: newest (live) or next (file) frame
                if frame is None:
                    break
                dets, hands = models(frame.image, summary)  # infer: detect, classify, landmarks
                with summary.timed("track"):  # track/debounce: hand ids, gesture start/end events
                    extras = [hands.hand(i) for i in range(len(hands))] if hands is not None else None
                    ids, events = gestures.update(dets, frame.index, frame.time, extras)
                outputs.emit(events)  # emit: events file, hooks
                outputs.render(frame, dets, ids, hands)  # render: video and window (render thread)
                summary.frame_done(frame.time, frame.capture_s)  # stats: frame count, latency, FPS
                last_index = frame.index
                if opts.max_frames and summary.frames >= opts.max_frames:
                    summary.stopped_by = f"--max-frames {opts.max_frames}"
                    break
            finish_run(capture, watch, summary, stop, stop_reason, last_index)
        # Leaving the block drained the render queue and closed every output (the video renamed into place).
    except BaseException as e:
        summary.stopped_by = "KeyboardInterrupt" if isinstance(e, KeyboardInterrupt) else f"error: {first_line(e)}"
        raise
    finally:
        summary.finish()
        if outputs is not None:
            video = outputs.video
            summary.video_frames = video.frames if video is not None and not video.failed else 0
            summary.outputs = {s.uri: s.stats() for s in outputs.network}
            summary.hooks = outputs.hooks.stats
            summary.mqtt = outputs.mqtt_stats()
    return summary


def finish_run(capture: Capture, watch: Watch, summary: Summary, stop: threading.Event,
               stop_reason: list[str] | None, last_index: int) -> None:
    """Stop capture, record why the run ended and the capture figures, end the open gestures."""
    watch.outputs.hooks.begin_end()  # the hooks' grace runs while capture stops and the outputs close
    if stop.is_set():
        summary.stopped_by = stop_reason[0] if stop_reason else "stop request"
    capture.stop()
    watch()  # source events from the last moments
    stats = capture.stats
    summary.corrupt, summary.read_errors, summary.stale = stats.corrupt, stats.read_errors, stats.stale
    summary.reconnects, summary.reconnect_attempts = stats.reconnects, stats.reconnect_attempts
    summary.outage_s, summary.dropped = capture.outage_s(), capture.dropped
    if summary.frames == 0 and not stop.is_set():  # raised inside the block: no empty video is made
        raise HagridEdgeError(f"--source {capture.source.uri}: no frame could be decoded "
                              f"({stats.corrupt} corrupt){f'; {capture.error}' if capture.error else ''}")
    watch.outputs.emit(watch.gestures.finish(last_index, time.time()))
    if capture.failed:  # raised inside the block: the outputs so far are closed and kept
        raise HagridEdgeError(f"--source {capture.source.uri}: stopped after {summary.frames} frames: "
                              f"{capture.error} (the events and video so far are kept)")
    if capture.error:
        log.warning("%s", capture.error)
