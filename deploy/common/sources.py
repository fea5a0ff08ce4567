"""Frame sources by URI, one interface: cameras, streams, video files, image folders, stdin.

``open_source(uri)`` parses the URI; every source yields RGB ``uint8`` frames through ``read()``:
a frame, ``None`` at the end of the stream (or when a live source is lost), or ``CorruptFrame``
raised for a frame that could not be decoded (the caller skips and counts it).

| URI                          | source                                                   |
|------------------------------|----------------------------------------------------------|
| ``csi://0``                  | CSI camera: GStreamer nvarguscamerasrc on a Jetson, picamera2 on a Pi |
| ``usb://0``, ``/dev/video0`` | V4L2 camera                                              |
| ``rtsp://...``, ``http://...`` | network stream                                         |
| ``file.mp4`` (any video)     | video file, every frame in order                         |
| a folder                     | its images (subfolders too) in path order                                |
| ``-``                        | concatenated JPEG/PNG images on stdin (e.g. ffmpeg ``-f image2pipe``) |
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import cv2
import numpy as np

from hagrid_edge.errors import DataError, HagridEdgeError
from hagrid_edge.images import read_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# A video file whose reads fail this many times in a row has ended (or is beyond repair).
MAX_CONSECUTIVE_FAILURES = 5
STREAM_TIMEOUT_MS = 5000
# FFmpeg's H.264 decoder holds back one frame per extra thread (frame threading): on a loopback RTSP
# camera (640x480, 10 fps) a frame was 104 ms old at read with 1 thread, 204 ms with 2 and 604 ms with
# 4 (``benchmarks/bench_rtsp_faults.py --decoder-threads``). Live sources decode on one thread.
LIVE_DECODER_THREADS = 1
# FFmpeg options of network streams (OpenCV reads them from this variable when a capture opens): no
# client-side buffering (it would add seconds of lag), RTSP over TCP (no lost packets, no smeared frames).
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
STREAM_FFMPEG_OPTIONS = "rtsp_transport;tcp|fflags;nobuffer"
_env_lock = threading.Lock()


@contextlib.contextmanager
def _ffmpeg_options(options: str) -> Iterator[None]:
    """``options`` for the captures opened inside (unless the user set their own), and only for them:
    a video file opened later in the same process must not get a stream's options (nobuffer lost its
    first frames)."""
    with _env_lock:
        own = os.environ.get(FFMPEG_OPTIONS_ENV)
        if own is None:
            os.environ[FFMPEG_OPTIONS_ENV] = options
        try:
            yield
        finally:
            if own is None:
                os.environ.pop(FFMPEG_OPTIONS_ENV, None)


class CorruptFrame(Exception):
    """One frame could not be decoded; the stream goes on."""


class FrameSource(Protocol):
    uri: str
    live: bool  # camera or network stream: keep only the newest frame, reconnect when lost
    fps: float | None  # nominal frame rate, if the source declares one
    timestamp_s: float | None  # stream time of the frame ``read`` returned last (live sources), if known

    def open(self) -> None:
        """Open (or reopen) the device/file; ``HagridEdgeError`` naming the URI if it cannot."""
        ...

    def read(self) -> np.ndarray | None:
        """The next RGB frame; ``None`` at the end; ``CorruptFrame`` for an undecodable frame."""
        ...

    def close(self) -> None: ...


def _bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class VideoCaptureSource:
    """Anything OpenCV's VideoCapture opens: V4L2 devices, network streams, video files, GStreamer."""

    def __init__(self, uri: str, target: str | int, live: bool, api: int = cv2.CAP_ANY,
                 width: int | None = None, height: int | None = None,
                 decoder_threads: int = LIVE_DECODER_THREADS) -> None:
        self.uri, self.target, self.live, self.api = uri, target, live, api
        self.width, self.height, self.decoder_threads = width, height, decoder_threads
        self.timestamp_s: float | None = None
        self.cap: cv2.VideoCapture | None = None
        self.frame_count = 0  # frames the container declares (files), 0 if unknown
        self.fps: float | None = None
        self._failures = 0
        self._seen = 0  # frames read or skipped so far

    def open(self) -> None:
        self.close()
        params: list[int] = []
        stream = self.live and self.api == cv2.CAP_FFMPEG
        if stream:
            # Bounded waits, so a dropped connection ends a read and the capture thread can reconnect.
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
            n_threads = getattr(cv2, "CAP_PROP_N_THREADS", None)  # OpenCV >= 4.6; older ones decide themselves
            if n_threads is not None:
                params += [n_threads, self.decoder_threads]
        with _ffmpeg_options(STREAM_FFMPEG_OPTIONS) if stream else contextlib.nullcontext():
            cap = cv2.VideoCapture(self.target, self.api, params)
        if not cap.isOpened():
            cap.release()
            raise HagridEdgeError(f"--source {self.uri}: cannot open it")
        if self.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's own queue adds latency
            if self.width and self.height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self.frame_count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        self.cap, self._failures, self._seen = cap, 0, 0

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            return None
        ok, frame = self.cap.read()
        if ok and frame is not None and frame.size:
            self._failures = 0
            self._seen += 1
            if self.live:  # the frame's presentation time (V4L2: its buffer time); 0: not known
                ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
                self.timestamp_s = ms / 1000.0 if ms > 0 else None
            return _bgr_to_rgb(frame)
        if self.live:
            return None
        # A file: a failed read before the declared frame count is a damaged frame; several in a row, the end.
        self._failures += 1
        if self._failures >= MAX_CONSECUTIVE_FAILURES or self._seen >= self.frame_count:
            return None
        self._seen += 1
        raise CorruptFrame(f"{self.uri}: frame {self._seen - 1} cannot be decoded")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageFolderSource:
    """The images of a folder and its subfolders in path order, each one frame."""

    live = False
    fps = 1.0  # a slideshow: each photo one second in an output video
    timestamp_s = None

    def __init__(self, uri: str, folder: Path) -> None:
        self.uri, self.folder = uri, folder
        self.files: list[Path] = []
        self._next = 0

    def open(self) -> None:
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise HagridEdgeError(f"--source {self.uri}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        self._next = 0

    def read(self) -> np.ndarray | None:
        if self._next >= len(self.files):
            return None
        path = self.files[self._next]
        self._next += 1
        try:
            return read_rgb(path)
        except DataError as e:
            raise CorruptFrame(str(e)) from None

    def close(self) -> None:
        pass


def _decode(data: bytes, name: str) -> np.ndarray:
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if frame is None:
        raise CorruptFrame(f"{name}: cannot decode image")
    return _bgr_to_rgb(frame)


class StdinSource:
    """Concatenated JPEG or PNG images on a byte stream (``ffmpeg ... -f image2pipe -``)."""

    live = False
    fps = None
    timestamp_s = None
    _JPEG_END, _PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"

    def __init__(self, uri: str, stream: BinaryIO | None = None) -> None:
        self.uri = uri
        self.stream = stream if stream is not None else sys.stdin.buffer
        self._buf = b""
        self._count = 0

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray | None:
        while True:
            end = self._frame_end()
            if end is not None:
                data, self._buf = self._buf[:end], self._buf[end:]
                self._count += 1
                return _decode(data, f"stdin image {self._count}")
            chunk = self.stream.read1(1 << 16) if hasattr(self.stream, "read1") else self.stream.read(1 << 16)
            if not chunk:
                if self._buf.strip():
                    self._buf, self._count = b"", self._count + 1
                    raise CorruptFrame(f"stdin image {self._count}: incomplete at the end of the stream")
                return None
            self._buf += chunk

    def _frame_end(self) -> int | None:
        """End offset of the first complete image in the buffer (JPEG: EOI marker; PNG: IEND chunk)."""
        if self._buf.startswith(b"\x89PNG"):
            i = self._buf.find(self._PNG_END)
            return None if i < 0 else i + len(self._PNG_END)
        i = self._buf.find(self._JPEG_END, 2)
        if i < 0:
            return None
        nxt = self._buf.find(b"\xff\xd8", 2)
        if 0 <= nxt < i:  # garbage before the next SOI: hand it over as one (corrupt) frame
            return nxt
        return i + 2

    def close(self) -> None:
        pass


_DEVICE = re.compile(r"^/dev/video(\d+)$")


def open_source(uri: str, width: int | None = None, height: int | None = None) -> FrameSource:
    """The source ``uri`` names, opened; ``HagridEdgeError`` naming it if it cannot be."""
    source = parse_source(uri, width, height)
    source.open()
    return source


def parse_source(uri: str, width: int | None = None, height: int | None = None) -> FrameSource:
    """The source ``uri`` names, not yet opened."""
    if uri == "-":
        return StdinSource(uri)
    if uri.startswith("csi://"):
        sensor = _index(uri, "csi://")
        if _is_jetson():
            from hagrid_edge.deploy.jetson.gstreamer import csi_pipeline

            if "GStreamer:                   YES" not in cv2.getBuildInformation():
                raise HagridEdgeError(f"--source {uri}: this OpenCV has no GStreamer; on a Jetson use the "
                                      "system OpenCV (python3-opencv), see deploy/jetson/README.md")
            return VideoCaptureSource(uri, csi_pipeline(sensor, width or 1280, height or 720), live=True,
                                      api=cv2.CAP_GSTREAMER)
        from hagrid_edge.deploy.rpi.picamera_source import PicameraSource

        return PicameraSource(uri, sensor, width or 640, height or 480)
    if uri.startswith("usb://"):
        return VideoCaptureSource(uri, _index(uri, "usb://"), live=True, api=cv2.CAP_V4L2,
                                  width=width, height=height)
    m = _DEVICE.match(uri)
    if m:
        return VideoCaptureSource(uri, uri, live=True, api=cv2.CAP_V4L2, width=width, height=height)
    if re.match(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", uri):
        return VideoCaptureSource(uri, uri, live=True, api=cv2.CAP_FFMPEG)
    path = Path(uri)
    if path.is_dir():
        return ImageFolderSource(uri, path)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise HagridEdgeError(f"--source {uri}: a single image; pass the folder that holds it")
        return VideoCaptureSource(uri, str(path), live=False, api=cv2.CAP_FFMPEG)
    raise HagridEdgeError(f"--source {uri}: no such file, folder or device (URIs: csi://N, usb://N, "
                          "/dev/videoN, rtsp://..., a video file, an image folder, -)")


def _index(uri: str, prefix: str) -> int:
    rest = uri[len(prefix):]
    if not rest.isdigit():
        raise HagridEdgeError(f"--source {uri}: expected {prefix}N with a camera number N")
    return int(rest)


def _is_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()
