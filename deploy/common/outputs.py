"""What a run produces: annotated frames (window and/or video file) and an events JSONL; ``--output`` URIs
(the file, RTSP, the live page) are dispatched by ``output_uris.py``.

Events are appended to their file (or stdout) line by line as they happen, so a run that is killed
keeps every event it reported. The video is encoded beside its final name and renamed into place
when the run ends, however it ends, once checked whole; a failed write keeps the earlier file.
Hooks live in ``hooks.py``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from hagrid_edge.deploy.common.capture import SourceEvent
from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.labels import NO_GESTURE
from hagrid_edge.landmarks import BONES, HandLandmarks
from hagrid_edge.paths import fsync_path
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
# The video is given up (an error, the previous file kept) when its disk has less than this left:
# OpenCV's writer reports no failed write, and a full disk leaves a truncated, unplayable file.
MIN_FREE_BYTES = 64 * 1024
SPACE_CHECK_S = 1.0


def check_video_path(path: str | Path) -> None:
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        raise HagridEdgeError(f"--output {path}: use a file name ending in {', '.join(VIDEO_SUFFIXES)}")


def free_bytes(folder: Path) -> int | None:
    """Bytes this process may still write on ``folder``'s file system (root may use the reserved blocks)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


class VideoOutput:
    """The annotated video, opened at the first frame's size.

    It is encoded under a hidden name beside ``path`` and renamed onto ``path`` by ``close`` once it
    is checked whole (it opens and holds every frame written): a run that fails midway keeps the
    video of its frames so far, while a video whose writing failed (a full disk) is discarded with an
    error, leaving any earlier file at ``path`` untouched.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        check_video_path(path)
        self.uri, self.path, self.fps = str(path), Path(path), fps
        # OpenCV picks the container from the file name, so encode under a name that keeps the suffix.
        self._encoding = self.path.with_name(f".{self.path.name}.{os.getpid()}.part{self.path.suffix}")
        self._writer: cv2.VideoWriter | None = None
        self._size = (0, 0)
        self._next_check = 0.0
        self.frames = 0
        self.failed = False

    def wants_frames(self) -> bool:
        return True  # every frame, in order

    def write(self, bgr: np.ndarray) -> None:
        if self._writer is None:
            self._open((bgr.shape[1], bgr.shape[0]))
        if (bgr.shape[1], bgr.shape[0]) != self._size:  # image folders mix sizes; a video has one
            bgr = letterbox(bgr, *self._size, pad_value=0)[0]
        self._writer.write(bgr)  # type: ignore[union-attr]
        self.frames += 1
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + SPACE_CHECK_S
            free = free_bytes(self._encoding.parent)
            if free is not None and free < MIN_FREE_BYTES:
                self.failed = True
                raise HagridEdgeError(f"--output {self.path}: the disk is full ({free} bytes left) after "
                                      f"{self.frames} frames; the video is not kept")

    def _remove_stale(self) -> None:
        """Encodings of runs that were killed (SIGKILL leaves them) with this output: their process is gone."""
        for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.part{glob.escape(self.path.suffix)}"):
            pid = stale.name[len(self.path.name) + 2:].split(".", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                stale.unlink(missing_ok=True)
            except OSError:
                pass

    def _open(self, size: tuple[int, int]) -> None:
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_SUFFIXES[self.path.suffix.lower()])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale()
            with open(self._encoding, "wb"):  # a folder that cannot take the file fails here, with its reason
                pass
        except OSError as e:
            self.failed = True
            raise HagridEdgeError(f"--output {self.path}: cannot write there ({e.strerror})") from None
        writer = cv2.VideoWriter(str(self._encoding), fourcc, self.fps, size)
        if not writer.isOpened():
            writer.release()
            self.failed = True
            self._encoding.unlink(missing_ok=True)
            raise HagridEdgeError(f"--output {self.path}: OpenCV cannot encode {self.path.suffix} "
                                  f"({VIDEO_SUFFIXES[self.path.suffix.lower()]}) video here")
        self._writer, self._size = writer, size

    def close(self) -> None:
        """Finish the file and rename it onto ``path`` if it is whole; raises ``HagridEdgeError`` if it is not."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        problem = "" if self.failed else self._damage()
        if self.failed or problem:
            self._encoding.unlink(missing_ok=True)
            if problem:
                self.failed = True
                raise HagridEdgeError(f"--output {self.path}: the video could not be written whole ({problem}); "
                                      "the file that was there before, if any, is kept")
            return
        fsync_path(self._encoding)
        os.replace(self._encoding, self.path)
        fsync_path(self.path.parent)

    def _damage(self) -> str:
        """Why the encoded file is not the video written (a full disk truncates it), or ''."""
        free = free_bytes(self._encoding.parent)
        if free is not None and free < MIN_FREE_BYTES:
            return f"the disk is full, {free} bytes left"
        cap = cv2.VideoCapture(str(self._encoding))
        try:
            if not cap.isOpened():
                return "it does not open"
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            if round(count) != self.frames:
                return f"it holds {max(round(count), 0)} of the {self.frames} frames written"
        finally:
            cap.release()
        return ""


class EventsOutput:
    """One JSON object per line, written and flushed as each event happens, so ``--events FILE`` holds
    every event reported so far however the run ends (SIGKILL included); ``-`` streams them to stdout.
    An existing file is replaced (truncated when the run starts)."""

    def __init__(self, target: str) -> None:
        self.name = target
        self._fd: int | None = None
        self._written = 0  # bytes of whole lines in the file
        if target != "-":
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            except OSError as e:
                raise HagridEdgeError(f"--events {target}: cannot write it ({e.strerror})") from None

    def write(self, event: GestureEvent | SourceEvent) -> None:
        line = json.dumps(event.to_dict()) + "\n"
        if self._fd is None:
            sys.stdout.write(line)
            sys.stdout.flush()
            return
        data = line.encode("utf-8")
        size = len(data)
        try:
            while data:  # one write per line; a short write (a disk filling up) continues where it stopped
                data = data[os.write(self._fd, data):]
        except OSError as e:
            with contextlib.suppress(OSError):  # no half line: the file ends with the last whole event
                os.ftruncate(self._fd, self._written)
                os.lseek(self._fd, self._written, os.SEEK_SET)
            raise HagridEdgeError(f"--events {self.name}: cannot write ({e.strerror}); it keeps the events "
                                  "written before") from None
        self._written += size

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
