"""Raspberry Pi camera (``csi://N`` on a Pi) through picamera2, imported only when such a source opens.

picamera2 hands over the newest completed request on each ``capture_array``; with two buffers the
camera never queues more than one frame behind.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hagrid_edge.errors import HagridEdgeError


class PicameraSource:
    live = True

    def __init__(self, uri: str, camera: int, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        self.uri, self.camera, self.width, self.height = uri, camera, width, height
        self.fps: float | None = fps
        self._cam: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise HagridEdgeError(f"--source {self.uri}: picamera2 is not installed (on Raspberry Pi OS: "
                                  "apt-get install python3-picamera2); see deploy/rpi/README.md") from None
        self.close()
        try:
            cam = Picamera2(self.camera)
            # RGB888 is B, G, R in memory (libcamera's naming): the frames arrive as OpenCV-style BGR.
            config = cam.create_video_configuration(main={"size": (self.width, self.height), "format": "RGB888"},
                                                    buffer_count=2,
                                                    controls={"FrameRate": float(self.fps or 30.0)})
            cam.configure(config)
            cam.start()
        except (IndexError, RuntimeError, OSError) as e:
            raise HagridEdgeError(f"--source {self.uri}: cannot open camera {self.camera} ({e})") from None
        self._cam = cam

    def read(self) -> np.ndarray | None:
        if self._cam is None:
            return None
        try:
            bgr = self._cam.capture_array("main")
        except RuntimeError:  # camera unplugged or the pipeline stopped: the runner reconnects
            return None
        return np.ascontiguousarray(bgr[:, :, 2::-1])

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None
