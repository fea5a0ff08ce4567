"""The Pi camera source (``csi://N`` off a Jetson) with a fake of only the ``picamera2`` module.

The fake camera serves a real HaGRID photo in picamera2's RGB888 layout (B, G, R bytes) and can be
"unplugged"; everything else (the source, capture thread, reconnect, the run) is the real code.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_run_cli import SEQUENCE, letterboxed

from hagrid_edge.cli import main
from hagrid_edge.deploy.common.capture import Capture
from hagrid_edge.deploy.common.sources import open_source, parse_source
from hagrid_edge.deploy.rpi.picamera_source import PicameraSource
from hagrid_edge.errors import HagridEdgeError


def fake_picamera2(bgr: np.ndarray, cameras: int = 1, unplug_after: int | None = None) -> types.ModuleType:
    module = types.ModuleType("picamera2")
    module.opened = []

    class Picamera2:
        def __init__(self, camera_num: int = 0) -> None:
            if camera_num >= cameras:
                raise IndexError("list index out of range")  # what picamera2 raises for a missing camera
            self.config, self.started, self.frames = None, False, 0
            module.opened.append(self)

        def create_video_configuration(self, main: dict, buffer_count: int, controls: dict) -> dict:
            return {"main": main, "buffer_count": buffer_count, "controls": controls}

        def configure(self, config: dict) -> None:
            assert config["main"]["format"] == "RGB888" and config["buffer_count"] <= 2
            self.config = config

        def start(self) -> None:
            self.started = True

        def capture_array(self, name: str = "main") -> np.ndarray:
            assert self.started and name == "main"
            self.frames += 1
            if unplug_after is not None and self.frames > unplug_after and len(module.opened) == 1:
                raise RuntimeError("Camera frontend has timed out!")
            w, h = self.config["main"]["size"]
            return cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)

        def stop(self) -> None:
            self.started = False

        def close(self) -> None:
            pass

    module.Picamera2 = Picamera2
    return module


@pytest.fixture
def palm_bgr(mini_root: Path) -> np.ndarray:
    return letterboxed(mini_root, *SEQUENCE[0])


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="csi:// is the GStreamer camera on a Jetson")
def test_frames_are_rgb_and_a_lost_camera_comes_back(palm_bgr: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_picamera2(palm_bgr, unplug_after=3)
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    source = parse_source("csi://0", 640, 480)
    assert isinstance(source, PicameraSource) and source.live
    source.open()
    capture = Capture(source, backoff=(0.01, 0.02)).start()
    frames = [capture.get() for _ in range(6)]
    capture.stop()
    np.testing.assert_array_equal(frames[0].image, palm_bgr[:, :, ::-1])
    assert capture.stats.reconnects >= 1 and len(fake.opened) >= 2
    with pytest.raises(HagridEdgeError, match="cannot open camera 1"):
        open_source("csi://1")


def test_run_on_the_pi_camera(palm_bgr: np.ndarray, hand_detector: Path, crop_classifier: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("csi:// is the GStreamer camera on a Jetson")
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2(palm_bgr))
    rc = main(["run", "--engine", str(hand_detector), "--classifier", str(crop_classifier), "--source", "csi://0",
               "--headless", "--max-frames", "6", "--events", str(tmp_path / "ev.jsonl"),
               "--summary", str(tmp_path / "s.json")])
    assert rc == 0
    events = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [(e["event"], e["gesture"]) for e in events] == [("start", "palm"), ("end", "palm")]
    assert json.loads((tmp_path / "s.json").read_text())["stopped_by"] == "--max-frames 6"
