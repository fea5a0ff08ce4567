"""``hagrid-edge run`` for real: the authors' ONNX pair on videos made from real HaGRID photos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from hagrid_edge.cli import main
from hagrid_edge.images import read_rgb
from hagrid_edge.processing import letterbox

# Val photos with one clearly shown hand that the authors' pair recognises (checked by eye and by
# running the pair once); the video shows them in this order.
SEQUENCE = (
    ("palm", "ff064654-1ec8-4877-8b70-1e73adf18740"),
    ("fist", "1a1c385a-7ab5-49a0-8291-99b804d8ec38"),
    ("like", "c1f1ec48-c626-429c-ae08-5929311311be"),
    ("ok", "6e3fd95c-8f03-4226-84d0-924e738ddcbb"),
)
HOLD = 8  # frames each photo is shown
SIZE = (640, 480)


def letterboxed(mini_root: Path, gesture: str, image_id: str) -> np.ndarray:
    """A real HaGRID photo centred on a black 640x480 frame (BGR, for cv2 writers)."""
    img = read_rgb(mini_root / "hagrid_dataset_512" / gesture / f"{image_id}.jpg")
    frame = letterbox(img, *SIZE, pad_value=0, interpolation=cv2.INTER_AREA)[0]
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)


def make_video(mini_root: Path, path: Path, hold: int = HOLD, repeat: int = 1, fps: float = 15.0) -> int:
    """Write the gesture sequence as a video; returns its frame count."""
    frames = [letterboxed(mini_root, g, i) for g, i in SEQUENCE]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
    n = 0
    for _ in range(repeat):
        for frame in frames:
            for _ in range(hold):
                writer.write(frame)
                n += 1
    writer.release()
    return n


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def gesture_video(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "gestures.mp4"
    make_video(mini_root, path)
    return path


def test_two_stage_events_and_video(gesture_video: Path, hand_detector: Path, crop_classifier: Path,
                                    tmp_path: Path) -> None:
    ev, out, summary = tmp_path / "ev.jsonl", tmp_path / "out.mp4", tmp_path / "summary.json"
    rc = main(["run", "--engine", str(hand_detector), "--classifier", str(crop_classifier),
               "--source", str(gesture_video), "--headless", "--events", str(ev), "--output", str(out),
               "--summary", str(summary), "--threads", "2"])
    assert rc == 0
    events = read_events(ev)
    starts = [e for e in events if e["event"] == "start"]
    assert [e["gesture"] for e in starts] == [g for g, _ in SEQUENCE]
    # each gesture starts while its photo is on screen and ends once
    for k, e in enumerate(starts):
        assert k * HOLD <= e["frame"] < (k + 1) * HOLD
        assert e["score"] > 0.5 and len(e["box"]) == 4 and e["track"] > 0
    assert sorted(e["gesture"] for e in events if e["event"] == "end") == sorted(g for g, _ in SEQUENCE)
    frames = len(SEQUENCE) * HOLD
    assert count_frames(out) == frames
    s = json.loads(summary.read_text())
    assert s["frames"] == frames and s["video_frames"] == frames and s["stopped_by"] == "end of source"
    assert {"capture", "pre", "infer", "post", "render"} <= set(s["stage_ms"])
    assert not list(tmp_path.glob(".*.part*")), "temporary files left behind"


def test_image_folder_with_corrupt_frame_and_hooks(mini_root: Path, hand_detector: Path, crop_classifier: Path,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    n = 0
    for gesture, image_id in SEQUENCE[:2]:
        jpeg = cv2.imencode(".jpg", letterboxed(mini_root, gesture, image_id))[1].tobytes()
        for _ in range(6):
            (folder / f"{n:04d}.jpg").write_bytes(jpeg)
            n += 1
    broken = folder / f"{3:04d}.jpg"
    broken.write_bytes(broken.read_bytes()[:2000])  # truncated: one corrupt frame
    (tmp_path / "hook_sink.py").write_text(
        "import json, os\n"
        "def record(event):\n"
        "    with open(os.environ['HOOK_OUT'], 'a') as f:\n"
        "        f.write(json.dumps(event) + '\\n')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HOOK_OUT", str(tmp_path / "py_hook.jsonl"))
    cmd_out = tmp_path / "cmd_hook.txt"
    rc = main(["run", "--engine", str(hand_detector), "--classifier", str(crop_classifier), "--source", str(folder),
               "--headless", "--summary", str(tmp_path / "s.json"), "--debounce-n", "2", "--debounce-m", "3",
               "--on-gesture", "hook_sink:record",
               "--on-gesture", f"sh -c 'echo $HAGRID_EDGE_GESTURE >> {cmd_out}'"])
    assert rc == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["corrupt_frames"] == 1 and s["frames"] == n - 1
    assert "corrupt frames skipped 1" in capsys.readouterr().out
    assert [e["gesture"] for e in read_events(tmp_path / "py_hook.jsonl")] == ["palm", "fist"]
    assert cmd_out.read_text().split() == ["palm", "fist"]


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_inputs(gesture_video: Path, hand_detector: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    src = ["--source", str(gesture_video), "--headless"]
    weird = tmp_path / "model.caffemodel"
    weird.write_bytes(b"\x00" * 64)
    assert "unsupported model format '.caffemodel'" in _error_line(capsys, ["run", "--engine", str(weird), *src])

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(4096))
    spec = tmp_path / "spec.json"
    from hagrid_edge.spec import resolve_spec

    good = resolve_spec(hand_detector)
    spec.write_text(good.to_json())
    line = _error_line(capsys, ["run", "--engine", str(junk), "--spec", str(spec), *src])
    assert str(junk) in line and "cannot load" in line

    bad = good.to_dict()
    bad["input_name"] = "images"
    spec.write_text(json.dumps(bad))
    line = _error_line(capsys, ["run", "--engine", str(hand_detector), "--spec", str(spec), *src])
    assert "'images' is not a graph input" in line

    line = _error_line(capsys, ["run", "--engine", str(hand_detector), "--source", str(tmp_path / "nope.mp4")])
    assert "--source" in line and "no such file" in line
    corrupt_video = tmp_path / "corrupt.mp4"  # random bytes: a real file no decoder opens
    corrupt_video.write_bytes(os.urandom(2048))
    assert "cannot open it" in _error_line(capsys, ["run", "--engine", str(hand_detector),
                                                    "--source", str(corrupt_video)])
    assert "cannot open it" in _error_line(capsys, ["run", "--engine", str(hand_detector),
                                                    "--source", "/dev/video99"])
    line = _error_line(capsys, ["run", "--engine", str(hand_detector), *src, "--output", str(tmp_path / "o.gif")])
    assert "--output" in line
    line = _error_line(capsys, ["run", "--engine", str(hand_detector), *src, "--on-gesture", "no_such_mod:f"])
    assert "cannot import no_such_mod" in line
    line = _error_line(capsys, ["run", "--engine", str(hand_detector), *src, "--debounce-n", "6"])
    assert "need 1 <= N <= M" in line


def _started_run(args: list[str]) -> subprocess.Popen:
    """``hagrid-edge run ARGS`` in its own process, two seconds past its 'running' line."""
    proc = subprocess.Popen([sys.executable, "-m", "hagrid_edge.cli", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "running" in line:
            break
    time.sleep(2.0)
    return proc


def test_sigint_flushes_outputs_and_prints_summary(mini_root: Path, hand_detector: Path, crop_classifier: Path,
                                                   tmp_path: Path) -> None:
    video = tmp_path / "long.mp4"
    total = make_video(mini_root, video, hold=30, repeat=4)
    ev, out = tmp_path / "ev.jsonl", tmp_path / "out.mp4"
    proc = _started_run(["--engine", str(hand_detector), "--classifier", str(crop_classifier), "--source", str(video),
                         "--headless", "--events", str(ev), "--output", str(out)])
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped by SIGINT" in stdout and "stage ms" in stdout and "infer" in stdout
    processed = int(stdout.split(" frames in ")[0].rsplit(" ", 1)[1])
    assert 0 < processed < total
    assert count_frames(out) == processed
    events = read_events(ev)
    assert events and events[0] == {**events[0], "event": "start", "gesture": "palm"}
    # every started gesture was ended when the run stopped
    assert sum(e["event"] == "start" for e in events) == sum(e["event"] == "end" for e in events)


def test_stop_request_ends_a_run_whose_camera_is_gone(gesture_video: Path, hand_detector: Path,
                                                      tmp_path: Path) -> None:
    """A live source that cannot be reopened keeps reconnecting; a stop request still ends the run."""
    import threading

    from hagrid_edge.deploy.common.runner import RunOptions, run_loop
    from hagrid_edge.deploy.common.sources import VideoCaptureSource
    from hagrid_edge.pipeline import load_pipeline

    cam = tmp_path / "cam.mp4"
    cam.write_bytes(gesture_video.read_bytes())
    source = VideoCaptureSource("usb://7", str(cam), live=True)
    source.open()
    cam.unlink()  # unplugged: every reconnect fails once the open handle runs dry
    stop, reason = threading.Event(), ["SIGTERM"]
    threading.Timer(2.0, stop.set).start()
    t0 = time.time()
    summary = run_loop(load_pipeline(hand_detector), source, RunOptions(events=str(tmp_path / "ev.jsonl")), stop,
                       reason)
    assert time.time() - t0 < 4.0
    assert summary.stopped_by == "SIGTERM" and summary.reconnect_attempts >= 1 and summary.frames >= 1
    assert summary.reconnects == 0 and summary.source_lost == 1
    assert (tmp_path / "ev.jsonl").exists()


def test_video_with_no_decodable_frame(mini_root: Path, hand_detector: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "wrecked.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, SIZE)
    for _ in range(3):
        writer.write(letterboxed(mini_root, *SEQUENCE[0]))
    writer.release()
    data = bytearray(path.read_bytes())
    for k in [k for k in range(len(data) - 1) if data[k] == 0xFF and data[k + 1] == 0xD8]:
        data[k:k + 600] = bytes(600)  # every frame's JPEG header wiped
    path.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    line = _error_line(capsys, ["run", "--engine", str(hand_detector), "--source", str(path), "--output", str(out)])
    assert "no frame could be decoded (3 corrupt)" in line
    assert not out.exists() and not list(tmp_path.glob(".*part*"))


def test_second_sigint_during_cleanup_keeps_the_outputs(mini_root: Path, hand_detector: Path,
                                                        crop_classifier: Path, tmp_path: Path) -> None:
    """Ctrl-C, then Ctrl-C again while the run waits for a slow hook: the first one's outputs survive."""
    video = tmp_path / "long.mp4"
    make_video(mini_root, video, hold=30, repeat=4)
    ev, out = tmp_path / "ev.jsonl", tmp_path / "out.mp4"
    proc = _started_run(["--engine", str(hand_detector), "--classifier", str(crop_classifier), "--source", str(video),
                         "--headless", "--events", str(ev), "--output", str(out), "--on-gesture", "sleep 6"])
    proc.send_signal(signal.SIGINT)
    time.sleep(0.7)  # the run is now waiting for the hook's command to finish
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "SIGINT: already stopping, finishing the outputs" in stderr
    processed = int(stdout.split(" frames in ")[0].rsplit(" ", 1)[1])
    assert processed > 0 and count_frames(out) == processed
    events = read_events(ev)
    assert events[0]["gesture"] == "palm" and events[-1]["event"] == "end"


def test_window_is_shown_from_the_main_thread(gesture_video: Path, hand_detector: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """HighGUI calls (faked: no display here) happen on the main thread only; 'q' in the window stops the run."""
    import threading

    from hagrid_edge.deploy.common.runner import RunOptions, run_loop
    from hagrid_edge.deploy.common.sources import open_source
    from hagrid_edge.pipeline import load_pipeline

    calls: list[tuple[str, str]] = []
    shown: list[np.ndarray] = []

    def imshow(title: str, image: np.ndarray) -> None:
        calls.append(("imshow", threading.current_thread().name))
        shown.append(image)

    def wait_key(delay: int) -> int:
        calls.append(("waitKey", threading.current_thread().name))
        return ord("q") if len(shown) >= 5 else -1

    monkeypatch.setattr(cv2, "imshow", imshow)
    monkeypatch.setattr(cv2, "waitKey", wait_key)
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: calls.append(("destroy", threading.current_thread().name)))
    summary = run_loop(load_pipeline(hand_detector), open_source(str(gesture_video)), RunOptions(show=True),
                       threading.Event())
    assert {thread for _, thread in calls} == {threading.main_thread().name}
    assert len(shown) >= 5 and shown[0].shape == (480, 640, 3) and calls[-1][0] == "destroy"
    assert summary.stopped_by == "stop request" and summary.frames < len(SEQUENCE) * HOLD


def test_summary_file_survives_a_closed_stdout(gesture_video: Path, hand_detector: Path, tmp_path: Path) -> None:
    """stdout closed before the summary is printed (``| head`` that exited): the JSON file is still written."""
    summary = tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "hagrid_edge.cli", "run", "--engine", str(hand_detector),
                             "--source", str(gesture_video), "--headless", "--summary", str(summary)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader went away
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    s = json.loads(summary.read_text())
    assert s["frames"] > 0 and s["stopped_by"] == "end of source", s
