"""Fault injection against ``hagrid-edge run``: what the user keeps when things go wrong.

Each test names the fault and asserts what survives it: the events reported so far, the source and
earlier outputs untouched, one line naming the file or option, the exit code. The full disk and the
read-only folder are real (tmpfs mounts, which CI may make: it runs as root); elsewhere those tests
skip with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_run_cli import SEQUENCE, count_frames, letterboxed, make_video, read_events

from hagrid_edge.benchmarks.bench_shutdown import group_members
from hagrid_edge.cli import main
from hagrid_edge.deploy.common.capture import Capture
from hagrid_edge.deploy.common.runner import RunOptions, run_loop
from hagrid_edge.deploy.common.sources import CorruptFrame, StdinSource, open_source
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.pipeline import load_pipeline

SHUTDOWN_BOUND_S = 3.0  # what run promises: a stop request ends it this fast whatever the hooks do


# ---- helpers shared with test_faults_data.py ------------------------------------------------------
def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def mount_tmpfs(where: Path, options: str) -> Path:
    """A real small (or read-only) file system at ``where``; skip (fail under CI) if mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode != 0:
        msg = f"cannot mount a tmpfs here ({p.stderr.strip() or 'mount failed'}): needs root"
        if _in_ci():
            pytest.fail(f"under CI the fault tests must run for real: {msg}")
        pytest.skip(msg)
    return where


@pytest.fixture
def tmpfs(tmp_path: Path):
    """``tmpfs(name, options)`` mounts a tmpfs under tmp_path; every mount is undone afterwards."""
    mounted: list[Path] = []

    def make(name: str, options: str) -> Path:
        mounted.append(mount_tmpfs(tmp_path / name, options))
        return mounted[-1]

    yield make
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 1) -> str:
    """Run the CLI in-process; it must exit ``code`` with exactly one line on stderr (no traceback)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("hagrid-edge run: running")]
    assert rc == code, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hagrid_edge.cli", *args]


def kill_groups(pid_file: Path) -> None:
    """Kill the process groups of hooks that wrote their pid (a test cleaning up after a SIGKILLed run)."""
    if pid_file.exists():
        for pid in pid_file.read_text().split():
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def long_video(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 gesture starts over 144 frames (several seconds of work on two cores)."""
    path = tmp_path_factory.mktemp("faults") / "long.mp4"
    make_video(mini_root, path, hold=6, repeat=6)
    return path


@pytest.fixture(scope="module")
def short_video(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "short.mp4"
    make_video(mini_root, path, hold=4)
    return path


def _pair(hand_detector: Path, crop_classifier: Path) -> list[str]:
    return ["--engine", str(hand_detector), "--classifier", str(crop_classifier), "--headless", "--threads", "2"]


# ---- the run loses nothing ------------------------------------------------------------------------
def test_sigkill_keeps_every_event_reported_before(long_video: Path, hand_detector: Path, crop_classifier: Path,
                                                   tmp_path: Path) -> None:
    """SIGKILL while hooks hang: every event the run had handed to a hook is already in --events, whole."""
    ev, seen, pids = tmp_path / "ev.jsonl", tmp_path / "hook.jsonl", tmp_path / "pids"
    hook = f"sh -c 'echo $$ >> {pids}; echo \"$HAGRID_EDGE_EVENT\" >> {seen}; sleep 60'"
    proc = subprocess.Popen(cli("run", *_pair(hand_detector, crop_classifier), "--source", str(long_video),
                                "--events", str(ev), "--output", str(tmp_path / "out.mp4"), "--on-gesture", hook),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if seen.exists() and len(seen.read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.kill()
        proc.wait(10)
    finally:
        kill_groups(pids)
    reported = [json.loads(line) for line in seen.read_text().splitlines()]
    kept = read_events(ev)  # every line whole JSON
    assert len(reported) >= 4 and all(e in kept for e in reported)
    assert [e["event"] for e in kept].count("start") >= len(reported)


def test_sigterm_with_hanging_hooks_ends_within_the_bound(long_video: Path, hand_detector: Path,
                                                          crop_classifier: Path, tmp_path: Path) -> None:
    """Hooks that never end (a command that ignores SIGTERM, with a child; more than --max-hooks of them)
    do not hold the shutdown: SIGTERM ends the run within SHUTDOWN_BOUND_S, outputs in place, every hook
    process killed."""
    ev, out, pids, summary = tmp_path / "ev.jsonl", tmp_path / "out.mp4", tmp_path / "pids", tmp_path / "s.json"
    hook = f"sh -c 'trap \"\" TERM; echo $$ >> {pids}; sleep 60 & sleep 60'"
    proc = subprocess.Popen(cli("run", *_pair(hand_detector, crop_classifier), "--source", str(long_video),
                                "--events", str(ev), "--output", str(out), "--summary", str(summary),
                                "--on-gesture", hook, "--max-hooks", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (pids.exists() and len(pids.read_text().split()) >= 2):
            time.sleep(0.05)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        kill_groups(pids)
    assert proc.returncode == 0, stderr
    assert took < SHUTDOWN_BOUND_S, f"shutdown took {took:.2f} s"
    s = json.loads(summary.read_text())
    assert s["stopped_by"] == "SIGTERM" and s["hooks_killed_at_end"] == 2 and s["hooks_started"] == 2
    assert "killed its process group" in stderr
    assert count_frames(out) == s["frames"] > 0 and read_events(ev)
    for pgid in pids.read_text().split():  # the hooks and the children they left in the background
        assert not group_members(int(pgid), settle_s=1.0), f"hook process group {pgid} outlived the run"


def test_hook_output_stays_out_of_the_events_stream(short_video: Path, hand_detector: Path,
                                                    crop_classifier: Path) -> None:
    p = subprocess.run(cli("run", *_pair(hand_detector, crop_classifier), "--source", str(short_video),
                           "--events", "-", "--on-gesture", "echo HOOK-SAYS-HELLO"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 * len(SEQUENCE) and all(json.loads(line)["event"] in ("start", "end") for line in lines)
    assert p.stderr.count("HOOK-SAYS-HELLO") == len(SEQUENCE)


def test_python_hooks_that_hang_raise_or_exit_are_counted(short_video: Path, hand_detector: Path,
                                                          crop_classifier: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "bad_hooks.py").write_text(
        "import sys, time\n"
        "def hang(event):\n"
        "    time.sleep(3)\n"
        "def leave(event):\n"
        "    sys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    summary = tmp_path / "s.json"
    t0 = time.monotonic()
    assert main(["run", *_pair(hand_detector, crop_classifier), "--source", str(short_video), "--summary",
                 str(summary), "--on-gesture", "bad_hooks:hang", "--on-gesture", "bad_hooks:leave",
                 "--hook-timeout", "0.2", "--max-hooks", "2"]) == 0
    assert time.monotonic() - t0 < 30
    s = json.loads(summary.read_text())
    # Two slots: the first two `hang` calls fill them for 3 s; every `leave` that ran raised SystemExit.
    assert s["hooks_timed_out"] >= 2 and s["hooks_failed"] >= 1
    assert s["hooks_started"] + s["hooks_skipped"] == 2 * len(SEQUENCE)
    text = caplog.text
    assert "raised SystemExit: 3" in text and "a Python function cannot be stopped" in text


class _FailsAt:
    """The real pipeline, failing at one frame (a runtime error mid-run)."""

    def __init__(self, pipe, at: int) -> None:
        self.pipe, self.at, self.calls = pipe, at, 0

    @property
    def last_times(self):
        return self.pipe.last_times

    def __call__(self, frame):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("the accelerator went away")
        return self.pipe(frame)


def test_a_failure_mid_run_keeps_the_events_and_the_video(long_video: Path, hand_detector: Path,
                                                          crop_classifier: Path, tmp_path: Path) -> None:
    ev, out = tmp_path / "ev.jsonl", tmp_path / "out.mp4"
    pipe = _FailsAt(load_pipeline(hand_detector, crop_classifier, threads=2), at=40)
    from hagrid_edge.deploy.common.summary import Summary

    summary = Summary(str(long_video))
    with pytest.raises(RuntimeError, match="accelerator"):
        run_loop(pipe, open_source(str(long_video)), RunOptions(events=str(ev), output=str(out)),
                 threading.Event(), summary=summary)
    events = read_events(ev)
    assert [e["gesture"] for e in events if e["event"] == "start"][:3] == ["palm", "fist", "like"]
    assert count_frames(out) == 39 == summary.frames == summary.video_frames
    assert summary.stopped_by == "error: the accelerator went away"
    assert not list(tmp_path.glob(".*"))


def test_a_source_failing_while_reconnecting_is_an_error_not_the_end(short_video: Path, hand_detector: Path,
                                                                     tmp_path: Path) -> None:
    """A live source whose reopening raises something unexpected ends the run with an error (exit 1),
    not as 'end of source' with exit 0; the events so far are kept."""
    from hagrid_edge.deploy.common.sources import VideoCaptureSource

    class Flaky(VideoCaptureSource):
        opened = 0

        def open(self) -> None:
            Flaky.opened += 1
            if Flaky.opened > 1:
                raise RuntimeError("driver crashed")
            super().open()

    source = Flaky("usb://5", str(short_video), live=True)
    source.open()
    capture = Capture(source, backoff=(0.01, 0.01)).start()
    while capture.get(timeout=10) is not None:
        pass
    assert capture.failed and "driver crashed" in capture.error

    Flaky.opened = 0
    source = Flaky("usb://5", str(short_video), live=True)
    source.open()
    ev = tmp_path / "ev.jsonl"
    with pytest.raises(HagridEdgeError, match=r"usb://5: stopped after \d+ frames: .*RuntimeError: driver crashed"):
        run_loop(load_pipeline(hand_detector), source, RunOptions(events=str(ev)), threading.Event())
    assert "source_lost" in [e["event"] for e in read_events(ev)]


# ---- nothing destroyed ----------------------------------------------------------------------------
def test_output_that_is_an_input_is_refused(short_video: Path, hand_detector: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "mine.mp4"
    source.write_bytes(short_video.read_bytes())
    before = source.read_bytes()
    (tmp_path / "link.mp4").symlink_to(source)
    engine = tmp_path / "model.onnx"
    engine.write_bytes(hand_detector.read_bytes())
    base = ["run", "--engine", str(engine), "--source", str(source), "--headless"]
    for flag, value, names in (("--output", str(source), "--source"), ("--output", str(tmp_path / "link.mp4"),
                                                                          "--source"),
                               ("--events", str(engine), "--engine"), ("--summary", str(source), "--source")):
        line = one_error_line(capsys, [*base, flag, value])
        assert f"{flag} {value}: is the same file as {names}" in line
    line = one_error_line(capsys, [*base, "--events", str(tmp_path / "x.json"), "--summary", str(tmp_path / "x.json")])
    assert "is the same file as --summary" in line
    assert source.read_bytes() == before and engine.read_bytes() == hand_detector.read_bytes()


def test_full_disk_keeps_the_earlier_video_and_says_so(short_video: Path, long_video: Path, hand_detector: Path,
                                                       tmp_path: Path, tmpfs, capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    disk = tmpfs("small", "size=600k")
    earlier = disk / "out.mp4"
    earlier.write_bytes(short_video.read_bytes()[:300_000])  # what the user had there before
    before = earlier.read_bytes()
    ev = tmp_path / "ev.jsonl"  # on a disk with room: the events are kept
    line = one_error_line(capsys, ["run", "--engine", str(hand_detector), "--source", str(long_video), "--headless",
                                   "--output", str(earlier), "--events", str(ev)])
    assert line.startswith(f"hagrid-edge run: error: --output {earlier}: ") and "disk is full" in line
    assert earlier.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["out.mp4"]
    assert read_events(ev)


def test_full_disk_under_the_events_keeps_whole_lines(long_video: Path, hand_detector: Path, crop_classifier: Path,
                                                      tmpfs, capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmpfs("tiny", "size=12k")
    (disk / "filler").write_bytes(b"x" * 8192)  # two of its three 4 KiB pages: room for about 25 events
    ev = disk / "ev.jsonl"
    line = one_error_line(capsys, ["run", *_pair(hand_detector, crop_classifier), "--source", str(long_video),
                                   "--events", str(ev)])
    assert line.startswith(f"hagrid-edge run: error: --events {ev}: cannot write (No space left on device)")
    events = read_events(ev)  # whole lines only
    assert 10 < len(events) < 48 and events[0]["gesture"] == "palm"


def test_read_only_folder_is_one_line_before_any_work(short_video: Path, hand_detector: Path, tmpfs,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmpfs("ro", "ro,size=64k")
    base = ["run", "--engine", str(hand_detector), "--source", str(short_video), "--headless"]
    for flag, name in (("--output", "out.mp4"), ("--events", "ev.jsonl"), ("--summary", "s.json")):
        line = one_error_line(capsys, [*base, flag, str(ro / name)])
        assert line == f"hagrid-edge run: error: {flag} {ro / name}: cannot write in {ro} (Read-only file system)"


def test_bad_output_paths_are_one_line(short_video: Path, hand_detector: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adir.mp4").mkdir()
    (tmp_path / "afile").write_text("x")
    base = ["run", "--engine", str(hand_detector), "--source", str(short_video), "--headless"]
    assert "is a folder" in one_error_line(capsys, [*base, "--output", str(tmp_path / "adir.mp4")])
    assert "is a folder" in one_error_line(capsys, [*base, "--summary", str(tmp_path)])
    line = one_error_line(capsys, [*base, "--events", str(tmp_path / "afile" / "ev.jsonl")])
    assert f"{tmp_path / 'afile'} is not a folder" in line
    assert "cannot split it" in one_error_line(capsys, [*base, "--on-gesture", "sh -c 'unbalanced"])


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["--score-threshold", "-1"], "--score-threshold"), (["--score-threshold", "nan"], "--score-threshold"),
    (["--track-iou", "2"], "--track-iou"), (["--track-max-age", "-1"], "--track-max-age"),
    (["--max-frames", "-3"], "--max-frames"), (["--status-every", "-1"], "--status-every"),
    (["--output-fps", "0"], "--output-fps"), (["--threads", "0"], "--threads"),
    (["--hook-timeout", "0"], "--hook-timeout"), (["--max-hooks", "0"], "--max-hooks"),
    (["--debounce-k", "0"], "--debounce-k"),
])
def test_numeric_flags_are_checked_when_parsed(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    line = one_error_line(capsys, ["run", "--engine", "nowhere.onnx", "--source", "nowhere", *argv], code=2)
    assert line.startswith(f"hagrid-edge run: error: argument {flag}: ")


def bomb_png(width: int = 20000, height: int = 10000) -> bytes:
    """A PNG whose header announces more pixels than PIL decodes (its decompression-bomb limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_in_an_image_folder_is_one_corrupt_frame(mini_root: Path, hand_detector: Path,
                                                                     tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, (g, i) in enumerate(SEQUENCE):
        cv2.imwrite(str(folder / f"{2 * k}.jpg"), letterboxed(mini_root, g, i))
    (folder / "1.png").write_bytes(bomb_png())  # second in path order: the rest of the folder must still be read
    summary = tmp_path / "s.json"
    assert main(["run", "--engine", str(hand_detector), "--source", str(folder), "--headless",
                 "--summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert s["frames"] == len(SEQUENCE) and s["corrupt_frames"] == 1 and s["stopped_by"] == "end of source"
    assert "1.png: image too large to decode (200,000,000 pixels" in caplog.text


def exif_jpeg(jpeg: bytes, thumbnail: bytes) -> bytes:
    """``jpeg`` with an APP1 EXIF segment holding ``thumbnail`` (a whole JPEG, as cameras write)."""
    ifd1 = (struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, 44)
            + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail)) + struct.pack("<I", 0))
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0) + struct.pack("<I", 14) + ifd1 + thumbnail
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _camera_jpegs(mini_root: Path) -> list[bytes]:
    photos = []
    for g, i in SEQUENCE:
        frame = letterboxed(mini_root, g, i)
        thumb = cv2.imencode(".jpg", cv2.resize(frame, (64, 48)))[1].tobytes()
        photos.append(exif_jpeg(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(), thumb))
    return photos


def test_stdin_splits_camera_jpegs_with_exif_thumbnails(mini_root: Path, hand_detector: Path, crop_classifier: Path,
                                                        tmp_path: Path) -> None:
    photos = _camera_jpegs(mini_root)
    summary = tmp_path / "s.json"
    p = subprocess.run(cli("run", *_pair(hand_detector, crop_classifier), "--source", "-", "--summary",
                           str(summary), "--debounce-n", "1", "--debounce-m", "1", "--debounce-k", "1",
                           "--events", str(tmp_path / "ev.jsonl")),
                       input=b"".join(photos), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    s = json.loads(summary.read_text())
    assert s["frames"] == len(SEQUENCE) and s["corrupt_frames"] == 0
    starts = [e["gesture"] for e in read_events(tmp_path / "ev.jsonl") if e["event"] == "start"]
    assert starts == [g for g, _ in SEQUENCE]


def test_stdin_garbage_is_skipped_in_bounded_memory(mini_root: Path) -> None:
    import io

    photo = _camera_jpegs(mini_root)[0]
    noise = np.random.default_rng(0).integers(0, 255, 3 << 20, np.uint8).tobytes().replace(b"\xff\xd8", b"\x00\x00")
    stream = io.BytesIO(b"not an image\n" + photo + noise + photo + b"\xff\xd8\xff\xe0" + noise + photo)
    source = StdinSource("-", stream, max_bytes=1 << 20)
    got, corrupt = [], []
    t0 = time.monotonic()
    while True:
        try:
            frame = source.read()
        except CorruptFrame as e:
            corrupt.append(str(e))
            continue
        if frame is None:
            break
        got.append(frame.shape)
        assert len(source._buf) <= (1 << 20) + (1 << 16)
    assert got == [(480, 640, 3)] * 3 and time.monotonic() - t0 < 5
    assert len(corrupt) == 3 and "start no JPEG or PNG" in corrupt[0] and "no end within 1 MiB" in corrupt[2]


def test_ctrl_c_while_stdin_waits_exits_cleanly(mini_root: Path, hand_detector: Path, tmp_path: Path) -> None:
    ev = tmp_path / "ev.jsonl"
    proc = subprocess.Popen(cli("run", "--engine", str(hand_detector), "--source", "-", "--headless",
                                "--events", str(ev)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    for line in proc.stderr:
        if b"running" in line:
            break
    proc.stdin.write(_camera_jpegs(mini_root)[0] * 3)
    proc.stdin.flush()
    time.sleep(1.5)  # the frames are done; capture now waits on stdin, which stays open
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert time.monotonic() - t0 < SHUTDOWN_BOUND_S
    assert b"Fatal Python error" not in stderr and b"stopped by SIGINT" in stdout
    assert read_events(ev)
