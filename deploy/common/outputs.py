"""What a run produces: annotated frames (window and/or video file) and an events JSONL.

The runner writes the video and events files through ``atomic_path``: they appear complete when
the run ends (also after SIGINT/SIGTERM); ``--events -`` streams events to stdout as they happen.
Hooks live in ``hooks.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.labels import NO_GESTURE
from hagrid_edge.landmarks import BONES, HandLandmarks
from hagrid_edge.processing import Detections, letterbox


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


def draw_landmarks(out: np.ndarray, hands: HandLandmarks, min_presence: float, thick: int) -> None:
    """The 21 points and the bones of each hand the model is sure enough is there."""
    for points, presence in zip(hands.points, hands.presence):  # noqa: B905 (Python 3.8: no strict)
        if presence < min_presence:
            continue
        pts = [(int(round(x)), int(round(y))) for x, y in points]
        for a, b in BONES:
            cv2.line(out, pts[a], pts[b], (255, 255, 255), thick, cv2.LINE_AA)
        for p in pts:
            cv2.circle(out, p, thick + 2, (0, 0, 255), -1, cv2.LINE_AA)


def annotate(image_rgb: np.ndarray, dets: Detections, track_ids: list[int], fps: float,
             stage_ms: dict[str, float], hands: HandLandmarks | None = None, min_presence: float = 0.5
             ) -> np.ndarray:
    """A BGR copy of the frame with boxes, gesture names, scores, track ids, landmarks, FPS and stage times."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    scale = max(out.shape[1] / 960, 0.45)
    thick = max(1, round(scale * 2))
    if hands is not None:
        draw_landmarks(out, hands, min_presence, thick)
    for box, score, label, tid in zip(dets.boxes, dets.scores, dets.labels, track_ids):  # noqa: B905 (3.8)
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
