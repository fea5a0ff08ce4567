"""Annotated frames: drawn and handed to the outputs on a render thread, shown on the main thread.

Drawing and encoding are slow enough to overlap with inference, so they run on their own thread
fed by a small bounded queue (in order, nothing dropped: a video file gets every frame; the network
outputs of ``output_uris.py`` take the newest and encode on their own threads). A frame nobody
needs (network outputs without a viewer, no file, no window) is not drawn. OpenCV's
HighGUI is not thread-safe (Qt wants its own thread), so the window is only ever touched from the
thread that calls ``Window.poll``: the main one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from hagrid_edge.deploy.common.capture import FrameBuffer
from hagrid_edge.deploy.common.output_uris import FrameSink
from hagrid_edge.deploy.common.outputs import annotate
from hagrid_edge.deploy.common.summary import StageStats
from hagrid_edge.landmarks import HandLandmarks
from hagrid_edge.processing import Detections

WINDOW_TITLE = "hagrid-edge"


@dataclass
class RenderItem:
    image: np.ndarray
    dets: Detections
    ids: list[int]
    hands: HandLandmarks | None
    fps: float
    stage_ms: dict[str, float]


class Window:
    """The on-screen view: the render thread offers frames, the main thread shows the newest."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._newest = FrameBuffer(1, drop_oldest=True)

    def offer(self, bgr: np.ndarray) -> None:
        self._newest.put(bgr)

    def poll(self) -> None:
        """Show the newest frame, if one came, and handle keys (``q`` / Esc stop the run). Main thread only."""
        try:
            bgr = self._newest.get(timeout=0)
        except TimeoutError:
            bgr = None
        if bgr is not None:
            cv2.imshow(WINDOW_TITLE, bgr)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop.set()

    def close(self) -> None:
        self._newest.close()
        cv2.destroyAllWindows()


class Renderer:
    """Draws frames and hands them to the outputs on its own thread, in order, with a small bounded queue."""

    def __init__(self, sinks: Sequence[FrameSink], window: Window | None, stop: threading.Event, queue_size: int,
                 times: StageStats, min_presence: float = 0.5) -> None:
        self.sinks, self.window, self.stop, self.times = list(sinks), window, stop, times
        self.min_presence = min_presence
        self.buffer = FrameBuffer(queue_size, drop_oldest=False)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="render", daemon=True)
        self._thread.start()

    def submit(self, item: RenderItem) -> None:
        if self.error is not None:
            raise self.error
        self.buffer.put(item)

    def close(self) -> None:
        """Draw what is queued, then stop; re-raises a failure of the render thread."""
        self.buffer.close()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self.buffer.get()
            if item is None:
                return
            assert isinstance(item, RenderItem)
            t0 = time.perf_counter()
            try:
                targets = [sink for sink in self.sinks if sink.wants_frames()]
                if not targets and self.window is None:
                    continue
                bgr = annotate(item.image, item.dets, item.ids, item.fps, item.stage_ms, item.hands, self.min_presence)
                for sink in targets:
                    sink.write(bgr)
                if self.window is not None:
                    self.window.offer(bgr)
            except BaseException as e:  # handed to the main thread, which raises it
                self.error = e
                self.stop.set()
                self.buffer.close()
                return
            self.times.add(time.perf_counter() - t0)
