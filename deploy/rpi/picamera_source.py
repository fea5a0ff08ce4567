"""Raspberry Pi camera (``csi://N`` on a Pi) through picamera2, imported only when such a source opens.

picamera2 hands over the newest completed request on each ``capture_array``; with two buffers the
camera never queues more than one frame behind. A read waits at most ``READ_TIMEOUT_S``: a camera
that stops delivering counts as lost (the capture thread reopens it) instead of blocking forever,
and a camera that fails to configure or start is closed at once, so a reopen does not find it busy.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.system_modules import import_system_module

READ_TIMEOUT_S = 2.0  # many frame periods, even at a low frame rate or a long exposure


class PicameraSource:
    live = True
    timestamp_s = None  # a read is time-bounded instead (``read_timeout``)

    def __init__(self, uri: str, camera: int, width: int = 640, height: int = 480, fps: float = 30.0,
                 read_timeout: float = READ_TIMEOUT_S) -> None:
        self.uri, self.camera, self.width, self.height = uri, camera, width, height
        self.fps: float | None = fps
        self.read_timeout = read_timeout
        self._cam: Any = None

    def open(self) -> None:
        try:  # any failure is one line with its fix: not installed, or built for another numpy than the venv's
            Picamera2 = import_system_module("picamera2").Picamera2
        except HagridEdgeError as e:
            raise HagridEdgeError(f"--source {self.uri}: {e} (deploy/rpi/README.md)") from None
        self.close()
        try:
            cam = Picamera2(self.camera)
        except (IndexError, RuntimeError, OSError) as e:
            raise HagridEdgeError(f"--source {self.uri}: cannot open camera {self.camera} ({e})") from None
        try:
            # RGB888 is B, G, R in memory (libcamera's naming): the frames arrive as OpenCV-style BGR.
            config = cam.create_video_configuration(main={"size": (self.width, self.height), "format": "RGB888"},
                                                    buffer_count=2,
                                                    controls={"FrameRate": float(self.fps or 30.0)})
            cam.configure(config)
            cam.start()
        except Exception as e:  # whatever failed, the camera must not stay acquired
            _release(cam)
            raise HagridEdgeError(f"--source {self.uri}: cannot start camera {self.camera} ({e})") from None
        self._cam = cam

    def read(self) -> np.ndarray | None:
        """The newest frame; None when the camera is lost or delivers nothing within ``read_timeout``."""
        if self._cam is None:
            return None
        try:
            job = self._cam.capture_array("main", wait=False)
            bgr = self._cam.wait(job, timeout=self.read_timeout)
        except (RuntimeError, TimeoutError, concurrent.futures.TimeoutError):
            return None  # unplugged, the pipeline stopped or stalled: the capture thread reopens it
        return np.ascontiguousarray(bgr[:, :, 2::-1])

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            _release(cam)


def _release(cam: Any) -> None:
    """Stop and close a Picamera2 object, closing it even when stopping fails."""
    try:
        cam.stop()
    finally:
        cam.close()
