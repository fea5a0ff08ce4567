"""What a run produces: an annotated view (window and/or video file), an events JSONL, hooks.

The runner writes the video and events files through ``atomic_path``: they appear complete when
the run ends (also after SIGINT/SIGTERM); ``--events -`` streams events to stdout as they happen.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.labels import NO_GESTURE
from hagrid_edge.processing import Detections, letterbox

log = logging.getLogger("hagrid_edge.run")

STAGES = ("capture", "pre", "infer", "post", "track", "render")


def has_display() -> bool:
    """True when a window can be shown: a display server is named and this OpenCV has a GUI backend."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    gui = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(gui) and gui.group(1).upper() != "NONE"


# ---- drawing --------------------------------------------------------------------------------------
def _colour(label: str) -> tuple[int, int, int]:
    """A stable BGR colour per label; grey for hands without a gesture."""
    if label == NO_GESTURE:
        return (160, 160, 160)
    h = sum(ord(c) * 31 ** i for i, c in enumerate(label)) % 180
    hsv = np.uint8([[[h, 220, 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])  # type: ignore[return-value]


def annotate(image_rgb: np.ndarray, dets: Detections, track_ids: list[int], fps: float,
             stage_ms: dict[str, float]) -> np.ndarray:
    """A BGR copy of the frame with boxes, gesture names, scores, track ids, FPS and stage times."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    scale = max(out.shape[1] / 960, 0.45)
    thick = max(1, round(scale * 2))
    for box, score, label, tid in zip(dets.boxes, dets.scores, dets.labels, track_ids, strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = _colour(label)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        text = f"{label} {score:.2f} #{tid}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = max(y1, th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base - 2), (x1 + tw + 4, ty), colour, -1)
        cv2.putText(out, text, (x1 + 2, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    lines = [f"{fps:5.1f} FPS", "  ".join(f"{k} {v:.1f}" for k, v in stage_ms.items()) + " ms"]
    y = 0
    for line in lines:
        (tw, th), base = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, thick)
        cv2.rectangle(out, (0, y), (tw + 8, y + th + base + 6), (0, 0, 0), -1)
        cv2.putText(out, line, (4, y + th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, (255, 255, 255), thick,
                    cv2.LINE_AA)
        y += th + base + 6
    return out


# ---- files ---------------------------------------------------------------------------------------
VIDEO_SUFFIXES = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


def check_video_path(path: str | Path) -> None:
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        raise HagridEdgeError(f"--output {path}: use a file name ending in {', '.join(VIDEO_SUFFIXES)}")


class VideoOutput:
    """The annotated video, encoded into ``tmp`` (from ``atomic_path``); opened at the first frame's size."""

    def __init__(self, path: str | Path, tmp: Path, fps: float) -> None:
        check_video_path(path)
        self.path, self.tmp, self.fps = Path(path), tmp, fps
        # OpenCV picks the container from the file name, so encode under a name that keeps the suffix.
        self._encoding = tmp.with_name(tmp.name + self.path.suffix)
        self._writer: cv2.VideoWriter | None = None
        self._size = (0, 0)
        self.frames = 0

    def write(self, bgr: np.ndarray) -> None:
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_SUFFIXES[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._encoding), fourcc, self.fps, (bgr.shape[1], bgr.shape[0]))
            if not self._writer.isOpened():
                raise HagridEdgeError(f"--output {self.path}: OpenCV cannot write this video format")
            self._size = (bgr.shape[1], bgr.shape[0])
        if (bgr.shape[1], bgr.shape[0]) != self._size:  # image folders mix sizes; a video has one
            bgr = letterbox(bgr, *self._size, pad_value=0)[0]
        self._writer.write(bgr)
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it to ``tmp``; ``atomic_path`` then renames it or discards it."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._encoding, self.tmp)
        self._encoding.unlink(missing_ok=True)


class EventsOutput:
    """One JSON object per gesture event, flushed as it happens."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, event: GestureEvent) -> None:
        self.stream.write(json.dumps(event.to_dict()) + "\n")
        self.stream.flush()


# ---- hooks ---------------------------------------------------------------------------------------
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve_hook(text: str) -> Callable[[dict], object] | list[str]:
    """``module:function`` -> the callable; anything else -> a command line (argv list)."""
    if _CALLABLE.match(text):
        module_name, func_name = text.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise HagridEdgeError(f"--on-gesture {text}: cannot import {module_name} ({e})") from None
        func = getattr(module, func_name, None)
        if not callable(func):
            raise HagridEdgeError(f"--on-gesture {text}: {module_name} has no function {func_name}")
        return func
    argv = shlex.split(text)
    if not argv or shutil.which(argv[0]) is None:
        raise HagridEdgeError(f"--on-gesture {text}: no such command (or module:function)")
    return argv


class Hooks:
    """Runs hooks on gesture-start events on a worker thread, so a slow hook never stalls inference.

    A command gets the event in its environment (``HAGRID_EDGE_GESTURE``, ``HAGRID_EDGE_EVENT`` as
    JSON); a Python callable gets the event dict.
    """

    def __init__(self, specs: list[str]) -> None:
        self.hooks = [resolve_hook(s) for s in specs]
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=64)
        self._procs: list[subprocess.Popen] = []
        self._thread = threading.Thread(target=self._run, name="hooks", daemon=True)
        if self.hooks:
            self._thread.start()

    def fire(self, event: GestureEvent) -> None:
        if not self.hooks or event.kind != "start":
            return
        try:
            self._queue.put_nowait(event.to_dict())
        except queue.Full:
            log.warning("hooks are behind: skipped the %s event of track %d", event.gesture, event.track)

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            for hook in self.hooks:
                try:
                    if isinstance(hook, list):
                        env = {**os.environ, "HAGRID_EDGE_GESTURE": event["gesture"],
                               "HAGRID_EDGE_EVENT": json.dumps(event)}
                        self._procs.append(subprocess.Popen(hook, env=env, stdin=subprocess.DEVNULL))
                    else:
                        hook(event)
                except Exception as e:  # a user's hook must not end the run
                    log.warning("hook %s failed: %s", hook, e)
            self._procs = [p for p in self._procs if p.poll() is None]

    def close(self, timeout: float = 10.0) -> None:
        if not self.hooks:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("hooks still busy after %.0f s; left behind", timeout)
            return
        self._thread.join(timeout)
        for p in self._procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("hook command %s still running; left behind", p.args)
