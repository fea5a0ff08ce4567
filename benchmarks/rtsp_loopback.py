"""A loopback RTSP camera for benchmarks and tests: GStreamer's rtsp-server streaming real photos as H.264.

Two halves in one file. Run as a script by a Python that has GStreamer's introspection bindings
(``python3-gi`` with ``gir1.2-gst-rtsp-server-1.0``; Debian's ``/usr/bin/python3``), it serves
``rtsp://127.0.0.1:PORT/cam``: raw I420 photos pushed through ``appsrc`` at a fixed rate, each
held ``--hold`` frames, encoded by x264 (zero latency, a keyframe every ``--gop`` frames). Every
frame carries the wall-clock time it was pushed, in milliseconds, as 32 black/white 16x16 blocks
along its top edge, so a client on the same machine can measure a frame's age (``read_stamp``).
The script half uses the standard library and gi only.

Imported (by hagrid-edge's own Python, with numpy and OpenCV), ``LoopbackServer`` prepares the
frames, starts the server in its own process and plays the faults a real camera has: ``freeze``
(SIGSTOP: the connection stays open and nothing arrives), ``resume``, ``kill`` and ``restart``.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STAMP_BITS, STAMP_BLOCK = 32, 16  # the stamp: 32 bits, one 16x16 block each, left to right, MSB first


# ---- the server (run by a Python with gi) ---------------------------------------------------------
def _stamp(frame: bytearray, width: int, ms: int) -> None:
    """Write ``ms`` (mod 2**32) into the luma plane's top-left blocks: 235 for a 1 bit, 16 for a 0."""
    for bit in range(STAMP_BITS):
        value = bytes([235 if (ms >> (STAMP_BITS - 1 - bit)) & 1 else 16]) * STAMP_BLOCK
        x0 = bit * STAMP_BLOCK
        for y in range(STAMP_BLOCK):
            frame[y * width + x0:y * width + x0 + STAMP_BLOCK] = value


def _pusher(appsrc: object, photos: list[bytes], width: int, fps: float, hold: int, stop: threading.Event) -> None:
    """Push one stamped frame every 1/fps s until the client's media goes away."""
    from gi.repository import Gst

    k, period, due = 0, 1.0 / fps, time.monotonic()
    while not stop.is_set():
        frame = bytearray(photos[(k // hold) % len(photos)])
        _stamp(frame, width, int(time.time() * 1000) & 0xFFFFFFFF)
        buffer = Gst.Buffer.new_allocate(None, len(frame), None)  # GStreamer's own memory (a wrapped bytes
        buffer.fill(0, bytes(frame))  # object can be freed while the encoder still reads it)
        if appsrc.emit("push-buffer", buffer) != Gst.FlowReturn.OK:
            return
        k += 1
        due += period
        now = time.monotonic()
        if due < now - period:  # behind (the process was stopped): carry on from now, no burst of old frames
            due = now
        time.sleep(max(0.0, due - now))


def serve(args: argparse.Namespace) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    size = args.width * args.height * 3 // 2
    data = Path(args.frames).read_bytes()
    photos = [data[i:i + size] for i in range(0, len(data), size)]
    caps = f"video/x-raw,format=I420,width={args.width},height={args.height},framerate={round(args.fps)}/1"
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( appsrc name=src is-live=true format=time do-timestamp=true max-buffers=2 leaky-type=downstream caps={caps} ! "
                       f"x264enc tune=zerolatency sliced-threads=false threads=1 speed-preset=ultrafast bitrate=2000 key-int-max={args.gop} ! "
                       "rtph264pay name=pay0 pt=96 config-interval=-1 )")
    factory.set_shared(True)

    def configure(_factory: object, media: object) -> None:
        stop = threading.Event()
        appsrc = media.get_element().get_by_name("src")
        media.connect("unprepared", lambda *_: stop.set())
        threading.Thread(target=_pusher, args=(appsrc, photos, args.width, args.fps, args.hold, stop),
                         daemon=True).start()

    factory.connect("media-configure", configure)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"rtsp_loopback: cannot listen on port {args.port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


def main() -> None:
    p = argparse.ArgumentParser(description="serve raw I420 photos as an H.264 RTSP stream on 127.0.0.1")
    p.add_argument("--frames", required=True, help="concatenated I420 frames, WIDTHxHEIGHT each")
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--hold", type=int, default=30, help="frames each photo is shown")
    p.add_argument("--gop", type=int, default=60, help="frames from one keyframe to the next")
    p.add_argument("--port", type=int, required=True)
    serve(p.parse_args())


# ---- the client side (hagrid-edge's Python) -------------------------------------------------------
def read_stamp(bgr: object) -> int:
    """The millisecond stamp (mod 2**32) of a decoded frame (BGR or gray ``numpy`` image)."""
    import numpy as np

    img = np.asarray(bgr)
    gray = img.mean(axis=2) if img.ndim == 3 else img
    centre = STAMP_BLOCK // 2
    bits = [gray[centre - 2:centre + 2, b * STAMP_BLOCK + centre - 2:b * STAMP_BLOCK + centre + 2].mean() > 128
            for b in range(STAMP_BITS)]
    return sum(1 << (STAMP_BITS - 1 - i) for i, bit in enumerate(bits) if bit)


def stamp_age_s(bgr: object, now: float | None = None) -> float:
    """Seconds between the server pushing this frame and ``now`` (same machine's clock)."""
    now_ms = int((time.time() if now is None else now) * 1000) & 0xFFFFFFFF
    return ((now_ms - read_stamp(bgr)) & 0xFFFFFFFF) / 1000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """The server in a child process, serving ``photos`` (RGB images of one size) as ``url``."""

    def __init__(self, photos: list[object], fps: float = 30.0, hold: int = 30, gop: int | None = None,
                 python: str | None = None) -> None:
        import cv2
        import numpy as np

        from hagrid_edge.deploy.common.output_rtsp import APT_PACKAGES, GST_PYTHON_ENV, gst_python

        self.python = python or gst_python()
        if self.python is None:
            raise RuntimeError(f"no Python with GStreamer's RTSP server bindings (apt-get install {APT_PACKAGES}; "
                               f"or name one in ${GST_PYTHON_ENV})")
        self.height, self.width = np.asarray(photos[0]).shape[:2]
        self.fps, self.hold, self.gop = fps, hold, gop or int(round(2 * fps))
        self._dir = tempfile.TemporaryDirectory(prefix="hagrid-rtsp.")
        self._frames = Path(self._dir.name) / "frames.i420"
        with open(self._frames, "wb") as f:
            for rgb in photos:
                f.write(cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2YUV_I420).tobytes())
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> LoopbackServer:
        cmd = [self.python, str(Path(__file__).resolve()), "--frames", str(self._frames), "--width", str(self.width),
               "--height", str(self.height), "--fps", str(self.fps), "--hold", str(self.hold), "--gop", str(self.gop),
               "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:  # the one line it prints once it listens
            if self.proc.stdout.readline().strip() == "ready":
                return self
            if self.proc.poll() is not None:
                break
        self.kill()
        raise RuntimeError(f"the loopback RTSP server did not start on port {self.port}")

    def freeze(self) -> None:
        """The server hangs: its socket stays open, nothing more is sent."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """The server dies (connections reset)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def restart(self) -> LoopbackServer:
        self.kill()
        return self.start()

    def close(self) -> None:
        self.kill()
        self._dir.cleanup()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
