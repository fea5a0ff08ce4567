"""The GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc), for OpenCV's CAP_GSTREAMER.

``drop=true max-buffers=1`` on the appsink keeps only the newest frame: without it the pipeline
queues frames and the picture lags seconds behind (the usual complaint about CSI capture).
"""

from __future__ import annotations


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    return (f"nvarguscamerasrc sensor-id={sensor} ! "
            f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! "
            "videoconvert ! video/x-raw, format=BGR ! "
            "appsink drop=true max-buffers=1 sync=false")
