"""``--output rtsp://[HOST][:PORT]/PATH``: the annotated video as an H.264 RTSP stream.

GStreamer's rtsp-server runs in a child process (``rtsp_server.py``) under a Python that has the
system's GStreamer bindings, which a venv's Python usually lacks. A sender thread here takes the
newest frame (a buffer of one: the render thread never waits), converts it to I420 and writes it to
the child's stdin; the child encodes (x264) and serves it to every client. Frames are converted and
sent only while a client watches (the child says when). Frames replaced before the sender took
them (the child or the pipe behind) are counted as dropped. A child that dies mid-run is a warning,
never the end of the run.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np

from hagrid_edge.deploy.common.capture import FrameBuffer, SourceEvent
from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.deploy.common.output_uris import OutputTarget, resolve
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.processing import letterbox

log = logging.getLogger("hagrid_edge.run")

SERVER_SCRIPT = Path(__file__).resolve().with_name("rtsp_server.py")
GST_PYTHON_ENV = "HAGRID_EDGE_GST_PYTHON"  # a Python with GStreamer's bindings (default: the first found)
APT_PACKAGES = ("python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                "gstreamer1.0-plugins-ugly")
_GST_CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
              "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
              "assert all(Gst.ElementFactory.find(e) for e in ('appsrc', 'x264enc', 'rtph264pay'))")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 3.0


@functools.lru_cache(maxsize=None)
def gst_python() -> str | None:
    """A Python interpreter that can run the server (GStreamer, its RTSP server, x264), or None."""
    candidates = [os.environ.get(GST_PYTHON_ENV), sys.executable, "/usr/bin/python3", shutil.which("python3")]
    for python in dict.fromkeys(c for c in candidates if c):
        try:
            ok = subprocess.run([python, "-c", _GST_CHECK], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return python
    return None


def require_gstreamer(uri: str) -> None:
    if gst_python() is None:
        raise HagridEdgeError(f"--output {uri}: no Python with GStreamer's RTSP server and x264 was found "
                              f"(apt-get install {APT_PACKAGES}; or name one in ${GST_PYTHON_ENV})")


class RtspOutput:
    """The stream, served by a child process from the first call on; frames go to it while a client watches."""

    def __init__(self, target: OutputTarget, fps: float) -> None:
        require_gstreamer(target.uri)
        self.uri = target.uri
        self.sent = 0  # frames handed to the server
        self._newest = FrameBuffer(1, drop_oldest=True)
        self._active = False  # a client's media is playing
        self._size: tuple[int, int] | None = None
        address = resolve(target)
        self._proc = subprocess.Popen([str(gst_python()), str(SERVER_SCRIPT), "--host", address, "--port",
                                       str(target.port), "--path", target.path, "--fps", str(round(fps))],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      start_new_session=True)  # a terminal's Ctrl-C stops the run, which stops it
        self._errors: collections.deque[str] = collections.deque(maxlen=1)  # its last stderr line
        self._stderr_done = threading.Event()
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._listen, args=(lines,), name="rtsp-listen", daemon=True).start()
        threading.Thread(target=self._drain_stderr, name="rtsp-stderr", daemon=True).start()
        try:
            ready = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            ready = b""
        if ready.strip() != b"ready":
            self._stop_server()
            why = self._last_error() or f"the server did not start in {START_TIMEOUT_S:g} s"
            if f"{address}:{target.port}" in why:  # it could not listen: the port was taken since the check
                why = f"port {target.port} is in use on {target.host}"
            raise HagridEdgeError(f"--output {self.uri}: {why}")
        self._sender = threading.Thread(target=self._send, name="rtsp-send", daemon=True)
        self._sender.start()
        if address == "0.0.0.0":
            log.info("--output %s: serving H.264 on every interface, port %d: watch rtsp://<this machine>:%d%s",
                     self.uri, target.port, target.port, target.path)
        else:
            log.info("--output %s: serving H.264 on rtsp://%s:%d%s", self.uri, address, target.port, target.path)

    @property
    def dropped(self) -> int:
        """Frames replaced by newer ones before they could be sent (the server or the pipe behind)."""
        return self._newest.dropped

    def wants_frames(self) -> bool:
        return self._active

    def write(self, bgr: np.ndarray) -> None:
        if self._active:
            self._newest.put(bgr)

    def publish(self, event: GestureEvent | SourceEvent) -> None:
        """The stream carries the drawn video only."""

    def stats(self) -> dict:
        return {"frames_sent": self.sent, "frames_dropped": self.dropped}

    def close(self) -> None:
        """Stop sending; the server ends at its stdin's end (killed if it has not within a few seconds)."""
        self._newest.close()
        self._sender.join(STOP_TIMEOUT_S)
        self._stop_server()

    # ---- the child ---------------------------------------------------------------------------------
    def _listen(self, lines: queue.Queue[bytes]) -> None:
        """The child's stdout: ``ready``, then ``active 1``/``active 0`` as clients come and go."""
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith(b"active "):
                self._active = line.strip().endswith(b"1")
            else:
                lines.put(line)
        lines.put(b"")  # its end: it exited

    def _send(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        while True:
            bgr = self._newest.get()
            if bgr is None:
                return
            assert isinstance(bgr, np.ndarray)
            try:
                if self._size is None:
                    self._size = (bgr.shape[1] // 2 * 2, bgr.shape[0] // 2 * 2)  # I420: even sizes
                    header = {"width": self._size[0], "height": self._size[1]}
                    stdin.write(json.dumps(header).encode() + b"\n")
                if (bgr.shape[1], bgr.shape[0]) != self._size:  # odd sizes, image folders of mixed sizes
                    bgr = letterbox(bgr, *self._size, pad_value=0)[0]
                stdin.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                log.warning("--output %s: the RTSP server stopped (%s); the run goes on without it", self.uri,
                            self._last_error() or "it exited")
                self._active = False
                self._newest.close()
                return
            self.sent += 1

    def _drain_stderr(self) -> None:
        """Keep the child's last stderr line (GStreamer's warnings would fill the pipe and stall it)."""
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            if line.strip():
                self._errors.append(line.decode(errors="replace").strip())
        self._stderr_done.set()

    def _last_error(self) -> str:
        """The last line the child wrote to stderr, once it has exited and that is read."""
        try:
            self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return ""
        self._stderr_done.wait(STOP_TIMEOUT_S)
        return self._errors[-1] if self._errors else ""

    def _stop_server(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:  # a broken pipe flushed on close
                pass
        try:
            self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
