"""Frame sources and the capture thread, on real HaGRID frames."""

from __future__ import annotations

import io
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_run_cli import HOLD, SEQUENCE, letterboxed, make_video

from hagrid_edge.deploy.common.capture import Capture, FrameBuffer
from hagrid_edge.deploy.common.sources import (
    CorruptFrame,
    ImageFolderSource,
    StdinSource,
    VideoCaptureSource,
    open_source,
    parse_source,
)
from hagrid_edge.errors import HagridEdgeError


@pytest.fixture(scope="module")
def video(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "v.mp4"
    make_video(mini_root, path)
    return path


def _photo_index(frame: np.ndarray, refs: list[np.ndarray]) -> int:
    """Which of the sequence's photos a decoded frame shows (nearest by mean absolute difference)."""
    return int(np.argmin([np.abs(frame.astype(np.int16) - r.astype(np.int16)).mean() for r in refs]))


def test_uri_parsing_and_unopenable(tmp_path: Path) -> None:
    assert parse_source("usb://2").live and parse_source("/dev/video3").live
    assert parse_source("rtsp://10.0.0.2:8554/cam").live
    assert isinstance(parse_source("-"), StdinSource)
    assert isinstance(parse_source(str(tmp_path)), ImageFolderSource)
    for uri, message in (("usb://x", "expected usb://N"), (str(tmp_path / "none.mp4"), "no such file"),
                         ("/dev/video99", "cannot open it"), (str(tmp_path), "no images")):
        with pytest.raises(HagridEdgeError, match=message):
            open_source(uri)
    if not Path("/etc/nv_tegra_release").exists():  # not a Jetson: csi:// is the Pi camera
        with pytest.raises(HagridEdgeError, match=r"csi://0: picamera2 cannot be imported \(ModuleNotFoundError"):
            open_source("csi://0")


def test_video_file_every_frame_in_order_through_capture(video: Path, mini_root: Path) -> None:
    refs = [letterboxed(mini_root, g, i)[:, :, ::-1] for g, i in SEQUENCE]
    capture = Capture(open_source(str(video)), queue_size=2).start()
    shown = []
    while (frame := capture.get()) is not None:
        time.sleep(0.005)  # a consumer slower than decoding: the bounded queue blocks, nothing is lost
        shown.append((frame.index, _photo_index(frame.image, refs)))
        assert len(capture.buffer._items) <= 2
    assert [i for i, _ in shown] == list(range(len(SEQUENCE) * HOLD))
    assert [p for _, p in shown] == [k for k in range(len(SEQUENCE)) for _ in range(HOLD)]
    assert capture.dropped == 0 and capture.stats.corrupt == 0


def test_live_source_keeps_newest_frame_and_reconnects(video: Path) -> None:
    """A stream that ends is reopened (here the same file, read as if it were a live camera)."""
    source = VideoCaptureSource("test-stream", str(video), live=True)
    source.open()
    capture = Capture(source, backoff=(0.01, 0.05)).start()
    got = []
    deadline = time.time() + 20
    while len(got) < 12 and time.time() < deadline:
        frame = capture.get()
        assert frame is not None
        got.append(frame.index)
        time.sleep(0.03)  # slower than the stream: older frames are replaced, never queued
    capture.stop()
    assert got == sorted(got) and len(got) == 12
    assert capture.dropped > 0 and got[-1] - got[0] > len(got)
    assert capture.stats.reconnects >= 1 and got[-1] >= len(SEQUENCE) * HOLD  # read past the end: reopened


def test_lost_camera_backs_off_until_stopped(video: Path, tmp_path: Path) -> None:
    path = tmp_path / "cam.mp4"
    path.write_bytes(video.read_bytes())
    source = VideoCaptureSource("unplugged-cam", str(path), live=True)
    source.open()
    path.unlink()  # the device goes away: every reopen fails
    capture = Capture(source, backoff=(0.02, 0.08)).start()
    time.sleep(0.6)
    t0 = time.time()
    capture.stop()
    assert time.time() - t0 < 1.0
    # attempts waited 0.02, 0.04, 0.08, 0.08, ...: a handful, not a busy loop
    assert 3 <= capture.stats.reconnect_attempts <= 12 and capture.stats.reconnects == 0


def test_image_folder_skips_corrupt_images(mini_root: Path, tmp_path: Path) -> None:
    for k, (g, i) in enumerate(SEQUENCE):
        cv2.imwrite(str(tmp_path / f"{k}.png"), letterboxed(mini_root, g, i))
    data = cv2.imencode(".jpg", letterboxed(mini_root, *SEQUENCE[0]))[1].tobytes()
    (tmp_path / "1b.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    capture = Capture(open_source(str(tmp_path))).start()
    frames = []
    while (f := capture.get()) is not None:
        frames.append(f)
    assert len(frames) == len(SEQUENCE) and capture.stats.corrupt == 1
    assert frames[0].image.shape == (480, 640, 3)


def test_stdin_concatenated_images(mini_root: Path) -> None:
    frames = [letterboxed(mini_root, g, i) for g, i in SEQUENCE]
    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames[:2]]
    png = cv2.imencode(".png", frames[2])[1].tobytes()
    stream = io.BytesIO(jpegs[0] + png + jpegs[1] + jpegs[0][:3000])
    source = StdinSource("-", stream)
    source.open()
    got = [source.read() for _ in range(3)]
    np.testing.assert_array_equal(got[1], frames[2][:, :, ::-1])  # PNG: lossless, RGB
    assert all(g is not None and g.shape == (480, 640, 3) for g in got)
    with pytest.raises(CorruptFrame, match="incomplete"):
        source.read()
    assert source.read() is None


def test_frame_buffer_policies() -> None:
    live = FrameBuffer(1, drop_oldest=True)
    for k in range(5):
        assert live.put(k)
    assert live.get() == 4 and live.dropped == 4
    live.close()
    assert live.get() is None and not live.put(9)


def test_video_with_a_damaged_frame(mini_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "damaged.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for g, i in SEQUENCE:
        for _ in range(3):
            writer.write(letterboxed(mini_root, g, i))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [k for k in range(len(data) - 1) if data[k] == 0xFF and data[k + 1] == 0xD8]
    assert len(starts) == 3 * len(SEQUENCE)
    data[starts[5]:starts[5] + 600] = bytes(600)  # wipe frame 5's JPEG header
    path.write_bytes(bytes(data))
    capture = Capture(open_source(str(path))).start()
    n = 0
    while capture.get() is not None:
        n += 1
    assert (n, capture.stats.corrupt) == (3 * len(SEQUENCE) - 1, 1)
