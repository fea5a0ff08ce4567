"""Live RTSP sources against a real loopback RTSP server (GStreamer's rtsp-server, H.264) serving the
shipped HaGRID sample photos; frames carry the time they were sent, so their age can be read back."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_run_cli import HOLD, SEQUENCE, make_video

from hagrid_edge.benchmarks.bench_soak import sample_photos
from hagrid_edge.benchmarks.rtsp_loopback import LoopbackServer, stamp_age_s
from hagrid_edge.deploy.common.capture import STALE_S, Capture
from hagrid_edge.deploy.common.output_rtsp import APT_PACKAGES, gst_python
from hagrid_edge.deploy.common.runner import RunOptions, run_loop
from hagrid_edge.deploy.common.sources import FFMPEG_OPTIONS_ENV, VideoCaptureSource, open_source
from hagrid_edge.pipeline import load_pipeline

FPS = 10.0


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    if gst_python() is None:
        msg = f"no Python with GStreamer's RTSP server (apt-get install {APT_PACKAGES})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"under CI the loopback RTSP server must run: {msg}")
        pytest.skip(msg)
    return sample_photos()


@pytest.fixture
def server(photos: list[np.ndarray]) -> Iterator[LoopbackServer]:
    with LoopbackServer(photos, fps=FPS, hold=int(FPS)) as srv:
        yield srv


def _rtsp(url: str, threads: int | None = None) -> VideoCaptureSource:
    source = VideoCaptureSource(url, url, live=True, api=cv2.CAP_FFMPEG,
                                **({} if threads is None else {"decoder_threads": threads}))
    source.open()
    return source


def _frame_delays(capture: Capture, n: int) -> float:
    """Median age of ``n`` frames (after 10 to settle), in frame periods."""
    ages = []
    for k in range(n + 10):
        frame = capture.get(timeout=30)
        assert frame is not None
        if k >= 10:
            ages.append(stamp_age_s(frame.image, frame.time))
    capture.stop()
    return float(np.median(ages)) * FPS


def test_live_stream_decodes_without_held_frames(photos: list[np.ndarray]) -> None:
    """Each extra FFmpeg decoder thread holds one more frame back; a live source holds none extra."""
    with LoopbackServer(photos, fps=FPS, hold=int(FPS)) as a, LoopbackServer(photos, fps=FPS, hold=int(FPS)) as b:
        ours, two_threads = Capture(_rtsp(a.url)).start(), Capture(_rtsp(b.url, threads=2)).start()
        delay_ours, delay_two = _frame_delays(ours, 20), _frame_delays(two_threads, 20)
    assert delay_two - delay_ours > 0.7, (delay_ours, delay_two)


def test_frozen_server_is_lost_by_frame_age_not_by_read_returning(server: LoopbackServer) -> None:
    """A decoder with frames in hand (4 threads) releases one per 5 s read timeout after the server
    freezes; none of them may be handed over as current, and the loss is declared at the first."""
    capture = Capture(_rtsp(server.url, threads=4)).start()
    for _ in range(15):
        assert capture.get(timeout=30) is not None
    frozen = time.time()
    server.freeze()
    after: list[float] = []
    lost = []
    while not lost and time.time() - frozen < 25:
        try:
            frame = capture.get(timeout=0.25)
            if frame is not None and frame.time > frozen:
                after.append(stamp_age_s(frame.image, frame.time))
        except TimeoutError:
            pass
        lost = [e for e in capture.take_events() if e.kind == "source_lost"]
    capture.stop()
    assert lost, "no source_lost event"
    assert lost[0].time - frozen < 7.0  # the 5 s read timeout, not 10 or 15
    assert all(age < STALE_S for age in after), after
    assert capture.stats.stale >= 1


def test_killed_server_ends_gestures_then_reconnects_once(server: LoopbackServer, hand_detector: Path,
                                                          crop_classifier: Path, tmp_path: Path) -> None:
    """Server killed mid-gesture and back 3 s later: source_lost, the open gesture ends at once, one
    reconnect (several attempts), source_back; the frame rate leaves the outage out."""
    events_path = tmp_path / "ev.jsonl"
    stop = threading.Event()

    def faults() -> None:
        time.sleep(9.0)  # startup (keyframe) and a few photos with gestures
        server.kill()
        time.sleep(3.0)
        server.start()
        time.sleep(8.0)
        stop.set()

    threading.Thread(target=faults, daemon=True).start()
    summary = run_loop(load_pipeline(hand_detector, crop_classifier, threads=1), _rtsp(server.url),
                       RunOptions(events=str(events_path)), stop, ["SIGINT"])
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("source_lost") == 1 and kinds.count("source_back") == 1, kinds
    lost, back = kinds.index("source_lost"), kinds.index("source_back")
    open_at_loss = sum(k == "start" for k in kinds[:lost]) - sum(k == "end" for k in kinds[:lost])
    assert open_at_loss >= 1, kinds  # a gesture was on when the server died ...
    ends = kinds[lost + 1:lost + 1 + open_at_loss]
    assert ends == ["end"] * open_at_loss  # ... and ended with the loss, before anything else
    assert all(e["time"] == events[lost]["time"] for e in events[lost + 1:lost + 1 + open_at_loss])
    assert back > lost + open_at_loss and events[back]["outage_s"] > 3.0
    assert summary.reconnects == 1 and summary.reconnect_attempts >= 2 and summary.source_lost == 1
    assert 3.0 < summary.outage_s < summary.wall_s
    assert summary.fps == pytest.approx(summary.frames / (summary.wall_s - summary.outage_s))



def test_stream_options_stay_with_the_stream(server: LoopbackServer, mini_root: Path, tmp_path: Path) -> None:
    """A video file opened after a stream in the same process reads every frame (the stream's FFmpeg
    options, set process-wide, had cost a file its first frames)."""
    stream = _rtsp(server.url)
    stream.close()
    assert FFMPEG_OPTIONS_ENV not in os.environ
    video = tmp_path / "v.mp4"
    n = make_video(mini_root, video)
    source = open_source(str(video))
    frames = 0
    while source.read() is not None:
        frames += 1
    assert frames == n == len(SEQUENCE) * HOLD
