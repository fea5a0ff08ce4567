"""The Pi camera source (``csi://N`` off a Jetson) with a fake of only the ``picamera2`` module.

The fake camera serves a real HaGRID photo in picamera2's RGB888 layout (B, G, R bytes), with
picamera2's own call shapes (``capture_array(name, wait=False)`` returns a job, ``wait(job,
timeout)`` its frame or a timeout), and follows a script per opened camera: deliver a frame, be
"unplugged", fail in the driver, stall, or fail to configure / start. Everything else (the source,
the capture thread, reconnect, the run) is the real code.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import sys
import threading
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_run_cli import SEQUENCE, letterboxed

from hagrid_edge.cli import main
from hagrid_edge.deploy.common.capture import Capture
from hagrid_edge.deploy.common.runner import RunOptions, run_loop
from hagrid_edge.deploy.common.sources import open_source, parse_source
from hagrid_edge.deploy.rpi.picamera_source import PicameraSource
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.pipeline import load_pipeline

pytestmark = pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(),
                                reason="csi:// is the GStreamer camera on a Jetson")


def fake_picamera2(bgr: np.ndarray, cameras: int = 1, scripts: list[list[str]] | None = None,
                   fail_open: list[str] | None = None) -> types.ModuleType:
    """``scripts[k]``: what the k-th opened camera does on successive reads ("frame", "unplug",
    "oserror", "stall"); after its script, frames. ``fail_open[k]``: "configure"/"start" fails."""
    module = types.ModuleType("picamera2")
    module.opened = []
    module.release = threading.Event()  # ends every stall
    module.closed_during_read = False

    class Picamera2:
        def __init__(self, camera_num: int = 0) -> None:
            if camera_num >= cameras:
                raise IndexError("list index out of range")  # what picamera2 raises for a missing camera
            self.k = len(module.opened)
            self.script = list((scripts or [])[self.k] if scripts and self.k < len(scripts) else [])
            self.fail = fail_open[self.k] if fail_open and self.k < len(fail_open) else None
            self.config, self.started, self.closed, self.reading = None, False, False, False
            module.opened.append(self)

        def create_video_configuration(self, main: dict, buffer_count: int, controls: dict) -> dict:
            return {"main": main, "buffer_count": buffer_count, "controls": controls}

        def configure(self, config: dict) -> None:
            assert config["main"]["format"] == "RGB888" and config["buffer_count"] <= 2
            if self.fail == "configure":
                raise RuntimeError("Failed to configure camera")
            self.config = config

        def start(self) -> None:
            if self.fail == "start":
                raise RuntimeError("Failed to start camera: Device or resource busy")
            self.started = True

        def capture_array(self, name: str = "main", wait: bool | None = None) -> object:
            assert self.started and not self.closed and name == "main" and wait is False
            return self.script.pop(0) if self.script else "frame"

        def wait(self, job: object, timeout: float | None = None) -> np.ndarray:
            self.reading = True
            try:
                if job == "unplug":
                    raise RuntimeError("Camera frontend has timed out!")
                if job == "oserror":
                    raise OSError(19, "No such device")
                if job == "stall":
                    if not module.release.wait(timeout):
                        raise concurrent.futures.TimeoutError()
                w, h = self.config["main"]["size"]
                return cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
            finally:
                self.reading = False

        def stop(self) -> None:
            self.started = False

        def close(self) -> None:
            module.closed_during_read |= self.reading
            self.closed = True

    module.Picamera2 = Picamera2
    return module


@pytest.fixture
def palm_bgr(mini_root: Path) -> np.ndarray:
    return letterboxed(mini_root, *SEQUENCE[0])


def test_frames_are_rgb_and_a_lost_camera_comes_back(palm_bgr: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_picamera2(palm_bgr, scripts=[["frame", "frame", "frame", "unplug"]])
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    source = parse_source("csi://0", 640, 480)
    assert isinstance(source, PicameraSource) and source.live
    source.open()
    capture = Capture(source, backoff=(0.01, 0.02)).start()
    frames = [capture.get() for _ in range(6)]
    capture.stop()
    np.testing.assert_array_equal(frames[0].image, palm_bgr[:, :, ::-1])
    assert capture.stats.reconnects >= 1 and len(fake.opened) >= 2 and fake.opened[0].closed
    with pytest.raises(HagridEdgeError, match="cannot open camera 1"):
        open_source("csi://1")


@pytest.mark.parametrize("step", ["configure", "start"])
def test_a_camera_that_fails_to_start_is_closed(step: str, palm_bgr: np.ndarray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_picamera2(palm_bgr, fail_open=[step])
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    source = parse_source("csi://0", 640, 480)
    with pytest.raises(HagridEdgeError, match=f"--source csi://0: cannot start camera 0 .*Failed to {step}"):
        source.open()
    assert fake.opened[0].closed  # released: the next open does not find it busy
    source.open()
    assert source.read().shape == (480, 640, 3)
    source.close()


def test_a_stalled_camera_read_is_time_bounded(palm_bgr: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_picamera2(palm_bgr, scripts=[["frame", "stall"]])
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    source = PicameraSource("csi://0", 0, read_timeout=0.2)
    source.open()
    assert source.read() is not None
    t0 = time.perf_counter()
    assert source.read() is None  # no frame within the timeout: lost, for the capture thread to reopen
    assert time.perf_counter() - t0 < 2.0
    source.close()


def test_driver_errors_are_logged_counted_and_reopened(palm_bgr: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    fake = fake_picamera2(palm_bgr, scripts=[["frame", "oserror"], ["oserror"]])
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    source = open_source("csi://0")
    capture = Capture(source, backoff=(0.01, 0.02)).start()
    with caplog.at_level(logging.WARNING, logger="hagrid_edge.run"):
        frames = [capture.get(timeout=10) for _ in range(3)]
        capture.stop()
    assert all(f is not None for f in frames)
    assert capture.stats.read_errors == 2 and capture.stats.reconnects >= 2
    failed = [r.getMessage() for r in caplog.records if "read failed" in r.getMessage()]
    assert failed == ["csi://0: read failed (OSError: [Errno 19] No such device); reopening it"] * 2


def test_stop_never_closes_the_camera_under_a_read(palm_bgr: np.ndarray, hand_detector: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A read outlasting the capture's stop timeout: the run ends, and the camera is closed only once
    the read returns (by the capture thread), never under it."""
    fake = fake_picamera2(palm_bgr, scripts=[["frame", "stall"]])
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    source = PicameraSource("csi://0", 0, read_timeout=60)
    source.open()
    stop = threading.Event()

    def stop_once_stalled() -> None:  # in the stall: its job was taken (the script is empty) and it is being read
        deadline = time.time() + 30
        camera = fake.opened[0]
        while not (camera.reading and not camera.script) and time.time() < deadline:
            time.sleep(0.01)
        stop.set()

    threading.Thread(target=stop_once_stalled, daemon=True).start()
    summary = run_loop(load_pipeline(hand_detector), source, RunOptions(), stop, ["SIGINT"])
    assert summary.stopped_by == "SIGINT"
    assert fake.opened[0].reading and not fake.opened[0].closed  # still inside the driver: left open
    fake.release.set()  # the driver returns
    deadline = time.time() + 10
    while not fake.opened[0].closed and time.time() < deadline:
        time.sleep(0.01)
    assert fake.opened[0].closed and not fake.closed_during_read


def test_run_on_the_pi_camera(palm_bgr: np.ndarray, hand_detector: Path, crop_classifier: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2(palm_bgr))
    rc = main(["run", "--engine", str(hand_detector), "--classifier", str(crop_classifier), "--source", "csi://0",
               "--headless", "--max-frames", "6", "--events", str(tmp_path / "ev.jsonl"),
               "--summary", str(tmp_path / "s.json")])
    assert rc == 0
    events = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [(e["event"], e["gesture"]) for e in events] == [("start", "palm"), ("end", "palm")]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["stopped_by"] == "--max-frames 6" and summary["read_errors"] == 0


SIMPLEJPEG_UNDER_NUMPY_2 = ("numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, "
                            "got 88 from PyObject")


def test_a_picamera2_that_fails_to_import_is_one_line_with_its_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Not only ImportError: Raspberry Pi OS's picamera2 under a pip numpy 2 raises ValueError from simplejpeg
    (the real failure of Debian's own OpenCV is tested on the emulated Raspberry Pi OS, tests/test_pi_guide.py)."""
    package = tmp_path / "picamera2"
    package.mkdir()
    (package / "__init__.py").write_text(f"import sys\nprint('a page from numpy, with a stack', file=sys.stderr)\n"
                                         f"raise ValueError({SIMPLEJPEG_UNDER_NUMPY_2!r})\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    with pytest.raises(HagridEdgeError) as failed:
        PicameraSource("csi://0", 0).open()
    assert str(failed.value) == (f"--source csi://0: picamera2 cannot be imported (ValueError: {SIMPLEJPEG_UNDER_NUMPY_2})"
                                 "; fix: pip install 'numpy<2' (deploy/rpi/README.md)")
    assert capsys.readouterr().err == ""  # numpy's page is held back


def test_a_missing_picamera2_is_one_line_with_its_fix(tmp_path: Path, hand_detector: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ModuleNotFoundError
    rc = main(["run", "--engine", str(hand_detector), "--source", "csi://0", "--headless", "--max-frames", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("hagrid-edge run: error: --source csi://0: picamera2 cannot be imported "
                             "(ModuleNotFoundError: import of picamera2 halted; None in sys.modules); fix: ")
