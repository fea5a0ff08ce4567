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
import select
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import cv2
import numpy as np

from hagrid_edge.errors import DataError, HagridEdgeError, first_line
from hagrid_edge.images import read_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# A video file whose reads fail this many times in a row has ended (or is beyond repair).
MAX_CONSECUTIVE_FAILURES = 5
STREAM_TIMEOUT_MS = 5000
# FFmpeg's H.264 decoder holds back one frame per extra thread (frame threading): on a loopback RTSP
# camera (640x480, 10 fps) a frame was 104 ms old at read with 1 thread and 403 ms with
# 4 (``benchmarks/bench_rtsp_lag.py --decoder-threads 1 4``). Live sources decode on one thread.
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
    try:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    except cv2.error as e:  # e.g. over OpenCV's pixel limit
        raise CorruptFrame(f"{name}: cannot decode image ({first_line(e)})") from None
    if frame is None:
        raise CorruptFrame(f"{name}: cannot decode image")
    return _bgr_to_rgb(frame)


MAX_STDIN_IMAGE_BYTES = 64 << 20  # an image not ended within this many bytes is skipped as corrupt
_SOI, _PNG_SIGNATURE = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
# JPEG markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8), 0xD8, 0xD9))


class _NeedMore(Exception):
    """The buffer ends before the structure being parsed does."""


class StdinSource:
    """Concatenated JPEG or PNG images on a byte stream (``ffmpeg ... -f image2pipe -``, camera photos).

    Images are split by their structure, not by searching for an end marker: a JPEG by its segments
    (an EXIF thumbnail inside APP1 is skipped over, not taken for the end) up to the EOI after its
    scans, a PNG by its chunks up to IEND. Bytes that start no image are skipped (one corrupt frame
    per run of them) and an image that has not ended within ``MAX_STDIN_IMAGE_BYTES`` is dropped, so
    memory stays bounded and every byte is parsed once. stdin is read with ``os.read`` and ``select``:
    a stop request (``interrupt``) ends a read that waits for input.
    """

    live = False
    fps = None
    timestamp_s = None

    def __init__(self, uri: str, stream: BinaryIO | None = None, max_bytes: int = MAX_STDIN_IMAGE_BYTES) -> None:
        self.uri = uri
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.max_bytes = max_bytes
        try:
            self._fd: int | None = self.stream.fileno()
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation: an in-memory stream
            self._fd = None
        self._buf = bytearray()
        self._pos = 0  # where parsing of the image at the buffer's start resumes
        self._in_scan = False  # JPEG: inside entropy-coded data
        self._skipping = False  # inside a run of bytes that start no image (reported once)
        self._count = 0
        self._interrupted = threading.Event()
        self._eof = False

    def open(self) -> None:
        pass

    def interrupt(self) -> None:
        """Make a read waiting for input return ``None`` (the end) within a fraction of a second."""
        self._interrupted.set()

    def read(self) -> np.ndarray | None:
        while True:
            self._skip_garbage()
            if self._buf:
                end = self._image_end()
                if end is not None:
                    data = bytes(self._buf[:end])
                    del self._buf[:end]
                    self._pos, self._in_scan = 0, False
                    self._count += 1
                    return _decode(data, f"stdin image {self._count}")
                if len(self._buf) > self.max_bytes:
                    self._drop_oversized()
            if self._eof or not self._fill():
                self._eof = True
                if bytes(self._buf).strip():
                    self._buf, self._pos, self._in_scan = bytearray(), 0, False
                    self._count += 1
                    raise CorruptFrame(f"stdin image {self._count}: incomplete at the end of the stream")
                return None

    def _fill(self) -> bool:
        """Append what the stream has; False at its end (or after ``interrupt``)."""
        if self._fd is not None:
            while not self._interrupted.is_set():
                try:
                    ready, _, _ = select.select([self._fd], [], [], 0.2)
                except (OSError, ValueError):  # not selectable: read and block
                    ready = [self._fd]
                if ready:
                    break
            else:
                return False
            try:
                chunk = os.read(self._fd, 1 << 16)
            except InterruptedError:
                return True
        else:
            chunk = self.stream.read1(1 << 16) if hasattr(self.stream, "read1") else self.stream.read(1 << 16)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def _skip_garbage(self) -> None:
        """Drop bytes before the next image start; the first drop of a run of them is a corrupt frame
        (whitespace, e.g. a trailing newline, is dropped silently)."""
        buf = self._buf
        if not buf:
            return
        if buf.startswith(_SOI[: len(buf)]) or buf.startswith(_PNG_SIGNATURE[: len(buf)]):
            self._skipping = False
            return
        starts = [i for i in (buf.find(_SOI, 1), buf.find(_PNG_SIGNATURE, 1)) if i >= 0]
        cut = min(starts) if starts else max(len(buf) - len(_PNG_SIGNATURE), 1)
        blank = bytes(buf[:cut]).strip() == b""
        if blank and not starts and not self._eof and len(buf) < len(_PNG_SIGNATURE):
            return  # maybe the start of a signature after whitespace: wait for more
        del buf[:cut]
        self._pos, self._in_scan = 0, False
        if not blank and not self._skipping:
            self._skipping = True
            self._count += 1
            raise CorruptFrame(f"stdin image {self._count}: bytes that start no JPEG or PNG image, skipped")

    def _drop_oversized(self) -> None:
        """The image at the buffer's start has not ended within ``max_bytes``: skip to the next start."""
        nxt = [i for i in (self._buf.find(_SOI, 2), self._buf.find(_PNG_SIGNATURE, 2)) if i >= 0]
        del self._buf[:min(nxt) if nxt else len(self._buf)]
        self._pos, self._in_scan = 0, False
        self._count += 1
        self._skipping = not nxt
        raise CorruptFrame(f"stdin image {self._count}: no end within {self.max_bytes >> 20} MiB, skipped")

    def _image_end(self) -> int | None:
        """End offset of the image at the buffer's start, or None if more bytes are needed."""
        try:
            if self._buf.startswith(_PNG_SIGNATURE):
                return self._png_end()
            if self._buf.startswith(_SOI):
                return self._jpeg_end()
        except _NeedMore:
            return None
        return None  # a partial signature: wait for more

    def _png_end(self) -> int:
        buf = self._buf
        pos = self._pos or len(_PNG_SIGNATURE)
        while True:
            if len(buf) < pos + 8:
                self._pos = pos
                raise _NeedMore
            length = int.from_bytes(buf[pos:pos + 4], "big")
            kind = bytes(buf[pos + 4:pos + 8])
            if length > self.max_bytes:  # not a chunk: hand it over as a corrupt image up to here
                return pos + 8
            end = pos + 12 + length
            if kind == b"IEND":
                if len(buf) < end:
                    self._pos = pos
                    raise _NeedMore
                return end
            pos = end

    def _jpeg_end(self) -> int:
        buf = self._buf
        pos = self._pos or 2
        while True:
            if self._in_scan:  # entropy-coded data, or a broken structure: look for the next marker
                while True:
                    i = buf.find(b"\xff", pos)
                    if i < 0 or i + 1 >= len(buf):
                        self._pos = len(buf) if i < 0 else i
                        raise _NeedMore
                    nxt = buf[i + 1]
                    if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:  # stuffed 0xFF, restart markers: scan data
                        pos = i + 2
                    elif nxt == 0xFF:  # fill byte
                        pos = i + 1
                    else:
                        pos, self._in_scan = i, False
                        break
            if len(buf) < pos + 2:
                self._pos = pos
                raise _NeedMore
            if buf[pos] != 0xFF:  # not a marker where one must be: a damaged image, ended by the next marker
                self._in_scan = True
                continue
            marker = buf[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker == 0xD9:
                return pos + 2
            if marker == 0xD8:  # a new image before this one ended: this one is cut short
                return pos
            if marker in _STANDALONE:
                pos += 2
                continue
            if len(buf) < pos + 4:
                self._pos = pos
                raise _NeedMore
            length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            if length < 2:  # not a segment: a damaged image, ended by the next marker
                pos, self._in_scan = pos + 2, True
                continue
            seg_end = pos + 2 + length
            if marker == 0xDA:  # start of scan: its header, then entropy-coded data
                if len(buf) < seg_end:
                    self._pos = pos
                    raise _NeedMore
                pos, self._in_scan = seg_end, True
                continue
            pos = seg_end  # APPn (EXIF and its thumbnail included), DQT, DHT, SOFn, COM, ...: skipped whole

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
