"""``--output`` URIs for real: one ``hagrid-edge run`` over the shipped sample photos (fed to its stdin at
10 fps) writes a video file and serves an RTSP stream and the live page at once, while a real headless
Chromium watches the page and a second ``hagrid-edge run`` reads the RTSP stream back; then the bad
URIs, refused at start in one line."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import missing
from test_run_cli import count_frames, read_events

from hagrid_edge.benchmarks.bench_soak import SAMPLE, feed_stdin, sample_photos
from hagrid_edge.benchmarks.rtsp_loopback import free_port
from hagrid_edge.cli import main
from hagrid_edge.deploy.common.output_rtsp import APT_PACKAGES, gst_python
from hagrid_edge.paths import DEFAULT_MODELS

ENGINE = DEFAULT_MODELS / "gesture_detector.onnx"
# Sample photos the one-stage detector finds one confident gesture in (checked by running it once).
PHOTOS = ("fist", "mute", "three2", "two_up_inverted", "peace_inverted")
FPS = 10.0
LOOPS = 3  # times the RTSP reader sees every photo
BROWSERS = ("chromium-headless-shell", "chromium")
CHROMIUM_APT = "chromium-headless-shell"
WAIT_S = 60.0  # for each thing to appear; the run's speed is measured in benchmarks/bench_outputs.py


def _run_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hagrid_edge.cli", "run", "--engine", str(ENGINE), "--headless", "--threads", "1",
            *args]


def _above_4(fd: int) -> int:
    """``fd`` moved above 4, so that making the child's fds 3 and 4 cannot overwrite the other pipe end."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return high


class DevTools:
    """A headless Chromium driven over its DevTools pipe (``--remote-debugging-pipe``: JSON messages,
    NUL-terminated, commands in on fd 3 and replies out on fd 4), one page attached."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = (_above_4(fd) for fd in os.pipe())
        self._from_browser, from_browser_w = (_above_4(fd) for fd in os.pipe())

        def wire() -> None:  # in the child: its fds 3 and 4 are the pipe's ends
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen([binary, "--headless", "--remote-debugging-pipe", "--no-sandbox",
                                      "--disable-gpu", "--window-size=1100,720", f"--user-data-dir={profile}",
                                      "--no-first-run", "about:blank"],
                                     preexec_fn=wire, close_fds=False,  # closing would undo ``wire``
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._next_id = 0
        self.session = ""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, **params: object) -> dict:
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"the browser exited during {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.session = ""
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _until(what: str, check: object, timeout: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Run:
    """A ``hagrid-edge run`` in the background, its log collected."""

    proc: subprocess.Popen
    log: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, cmd: list[str], stdin: int | None = None) -> Run:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        run = cls(proc)
        for stream in (proc.stdout, proc.stderr):
            threading.Thread(target=run._collect, args=(stream,), daemon=True).start()
        return run

    def _collect(self, stream: io.BufferedReader) -> None:
        for line in stream:
            self.log.append(line.decode(errors="replace").rstrip())

    def frames(self) -> int:
        """Frames done, from the newest status line (``--status-every``)."""
        status = [line for line in list(self.log) if " status {" in line]
        return json.loads(status[-1].split(" status ", 1)[1])["frames"] if status else 0

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.log))

    def finish(self, timeout: float = WAIT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the run did not end:\n" + "\n".join(self.log[-20:])) from None


@dataclass
class LiveRun:
    """What the tests below read: the serving run's files and the page's and the reader's findings."""

    tmp: Path
    serving: Run
    reader: Run
    page_text: str
    screenshot: Path
    video_variance: float


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        missing(f"no headless Chromium (apt-get install {CHROMIUM_APT})")
    if gst_python() is None:
        missing(f"no Python with GStreamer's RTSP server (apt-get install {APT_PACKAGES})")
    photos = sample_photos()
    files = sorted(SAMPLE.rglob("*.jpg"))
    chosen = [photos[[f.parent.name for f in files].index(g)] for g in PHOTOS]
    tmp = tmp_path_factory.mktemp("live")
    http_port, rtsp_port = free_port(), free_port()
    rtsp = f"rtsp://127.0.0.1:{rtsp_port}/gestures"
    serving = Run.start(_run_cmd("--source", "-", "--output", str(tmp / "a.mp4"), "--output", f"http://:{http_port}",
                                 "--output", rtsp, "--events", str(tmp / "serving.jsonl"),
                                 "--summary", str(tmp / "serving.json")), stdin=subprocess.PIPE)
    stop_feed = threading.Event()
    threading.Thread(target=feed_stdin, args=(serving.proc.stdin, chosen, FPS, stop_feed), daemon=True).start()
    reader = browser_proc = None
    try:
        _until("the RTSP server", lambda: serving.said("serving H.264") or serving.proc.poll() is not None)
        assert serving.proc.poll() is None, "\n".join(serving.log)
        reader = Run.start(_run_cmd("--source", rtsp, "--events", str(tmp / "reader.jsonl"),
                                    "--summary", str(tmp / "reader.json"), "--status-every", "0.5"))
        with tempfile.TemporaryDirectory(prefix="hagrid-chromium.") as profile:
            browser_proc = DevTools(browser, Path(profile))
            browser_proc.call("Page.navigate", url=f"http://127.0.0.1:{http_port}/")
            _until("a video frame and an event row on the page", lambda: browser_proc.evaluate(
                "document.getElementById('video').naturalWidth > 0 && "
                "document.querySelectorAll('#events li.event').length > 0 && "
                "document.getElementById('stages').rows.length > 0"))
            time.sleep(1.0)  # a few more frames, events and a stats message
            page_text = str(browser_proc.evaluate("document.body.innerText"))
            box = browser_proc.evaluate("(() => { const r = document.getElementById('video').getBoundingClientRect();"
                                        " return [r.x, r.y, r.width, r.height]; })()")
            png = base64.b64decode(browser_proc.call("Page.captureScreenshot", format="png")["data"])
            browser_proc.close()
            browser_proc = None
        screenshot = tmp / "live-page.png"
        screenshot.write_bytes(png)
        print(f"\nscreenshot of the live page: {screenshot}")
        shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        x, y, w, h = (int(round(v)) for v in box)  # type: ignore[union-attr]
        variance = float(shot[y:y + h, x:x + w].astype(np.float64).var())
        _until(f"the RTSP reader's first {LOOPS} loops of the photos",
               lambda: reader.frames() >= LOOPS * len(PHOTOS) * FPS or reader.proc.poll() is not None)
    finally:
        if browser_proc is not None:
            browser_proc.close()
        if reader is not None and reader.proc.poll() is None:
            reader.proc.send_signal(signal.SIGINT)
        stop_feed.set()
        time.sleep(0.2)
        serving.proc.stdin.close()  # type: ignore[union-attr]  # the end of the source: the run ends normally
    assert serving.finish() == 0, "\n".join(serving.log)
    assert reader.finish() == 0, "\n".join(reader.log)
    # The file run: the video the serving run wrote holds the same annotated frames as its stream.
    file_run = Run.start(_run_cmd("--source", str(tmp / "a.mp4"), "--events", str(tmp / "file.jsonl")))
    assert file_run.finish() == 0, "\n".join(file_run.log)
    yield LiveRun(tmp, serving, reader, page_text, screenshot, variance)


def _events(path: Path) -> list[dict]:
    return read_events(path) if path.exists() else []


def _starts(path: Path) -> set[str]:
    return {e["gesture"] for e in _events(path) if e["event"] == "start"}


def test_page_in_a_browser_shows_the_video_events_and_stage_times(live: LiveRun) -> None:
    assert live.serving.said("live page at http://127.0.0.1:"), "http://:PORT listens on 127.0.0.1 and says so"
    assert live.video_variance > 100, f"the video is blank (pixel variance {live.video_variance:.1f}): {live.screenshot}"
    assert any(f"start {g}" in live.page_text for g in PHOTOS), live.page_text
    assert "FPS" in live.page_text and "infer" in live.page_text, live.page_text
    summary = json.loads((live.tmp / "serving.json").read_text())
    page = next(v for k, v in summary["outputs"].items() if k.startswith("http://"))
    assert page["frames_sent"] > 0 and page["viewers_peak"] >= 1


def test_rtsp_output_read_back_by_a_second_run(live: LiveRun) -> None:
    """The reader finds the photos' gestures that a run over the video file of the same annotated frames
    finds. Beyond them, a detector can see one more gesture at its threshold (an "ok" on the photos or
    in the drawn boxes and labels), which the stream's and the file's encodings blur differently: one
    such label may differ."""
    serving, file_run = _starts(live.tmp / "serving.jsonl"), _starts(live.tmp / "file.jsonl")
    reader = _starts(live.tmp / "reader.jsonl")
    photos = set(PHOTOS)
    assert photos <= serving and len(serving - photos) <= 1, serving  # at most one borderline extra label
    # the drawn boxes and labels cover part of each hand: most of the photos' gestures are still found
    assert len(file_run & photos) >= 3, file_run
    assert reader & photos == file_run & photos, (reader, file_run)
    assert len(reader ^ file_run) <= 1, (reader, file_run)
    figures = json.loads((live.tmp / "reader.json").read_text())
    assert figures["frames"] >= LOOPS * len(PHOTOS) * FPS and figures["source"].startswith("rtsp://")
    summary = json.loads((live.tmp / "serving.json").read_text())
    rtsp = next(v for k, v in summary["outputs"].items() if k.startswith("rtsp://"))
    assert figures["frames"] <= rtsp["frames_sent"]  # frames are sent only while a client watches


def test_video_file_written_beside_the_servers(live: LiveRun) -> None:
    summary = json.loads((live.tmp / "serving.json").read_text())
    assert summary["frames"] > 0 and summary["video_frames"] == summary["frames"]
    assert count_frames(live.tmp / "a.mp4") == summary["frames"]


# ---- bad input: one line naming the URI, exit 1, at start ------------------------------------------
@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(["run", "--engine", str(ENGINE), "--source", str(SAMPLE), "--headless", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("hagrid-edge run: error: --"), err
    return err[0]


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_port_in_use(scheme: str, busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"{scheme}://127.0.0.1:{busy_port}" + ("/gestures" if scheme == "rtsp" else "")
    events = tmp_path / "ev.jsonl"
    events.write_text("kept\n")
    line = _refused(["--output", str(tmp_path / "a.mp4"), "--output", uri, "--events", str(events)], capsys)
    assert f"--output {uri}: port {busy_port} is in use" in line
    assert events.read_text() == "kept\n" and not (tmp_path / "a.mp4").exists()  # nothing touched


@pytest.mark.parametrize(("uri", "reason"), [
    ("http://no-such-host.invalid:8080", "the host no-such-host.invalid does not resolve"),
    ("http://192.0.2.1:8080", "192.0.2.1 is not an address of this machine"),
    ("udp://127.0.0.1:5000", "unknown scheme udp://"),
    ("rtsp://127.0.0.1:8554", "name the stream"),
    ("http://127.0.0.1:99999", "the port must be a number in 1-65535"),
    ("events.txt", "use a file name ending in .mp4"),
])
def test_bad_output_uri(uri: str, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert f"--output {uri}: {reason}" in _refused(["--output", uri], capsys)


def test_two_servers_on_one_port(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    line = _refused(["--output", f"http://:{port}", "--output", f"rtsp://:{port}/g"], capsys)
    assert f"--output rtsp://:{port}/g: port {port} is also --output http://:{port}'s" in line


def test_file_output_checks_still_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = tmp_path / "same.mp4"
    line = _refused(["--output", f"http://:{free_port()}", "--output", str(same), "--summary", str(same)], capsys)
    assert f"--summary {same}: is the same file as --output {same}" in line


def test_cli_exit_without_traceback(busy_port: int) -> None:
    p = subprocess.run(_run_cmd("--source", str(SAMPLE), "--output", f"http://:{busy_port}"), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"hagrid-edge run: error: --output http://:{busy_port}: port {busy_port} is in use " \
                               "on 127.0.0.1", p.stderr
