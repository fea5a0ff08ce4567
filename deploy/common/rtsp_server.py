"""The RTSP server behind ``--output rtsp://...``: run as a script by a Python with GStreamer's bindings.

hagrid-edge's own environment (a venv, pip's OpenCV) usually cannot import GStreamer's introspection
bindings, which come with the system (Debian's ``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``), so
``output_rtsp.py`` starts this file under such a Python and feeds it frames through its stdin: a
JSON header line (``width``, ``height``), then raw I420 frames of that size, each pushed as it
arrives into ``appsrc ! x264enc ! rtph264pay`` of one media shared by every client. The stream is
mounted at once: a client that comes before the first frame waits for it (the frame's size sets
the caps). Standard library and gi only.

It prints ``ready`` once it listens (or one line on stderr and exits 1), then ``active 1`` when a
client's media starts and ``active 0`` when the last client left, so the run sends frames only while
someone watches. Stdin's end stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _pipeline(fps: int) -> str:
    """The media: raw frames (caps set by the header), x264 with no look-ahead (zero latency), a keyframe
    every 2 s so a viewer that joins sees a picture within 2 s, the parameter sets with every keyframe.
    One slice per frame: with zerolatency's sliced threads, FFmpeg (ffplay, OpenCV, hagrid-edge's own
    rtsp:// source) decoded the sample photos smeared, 12-20 dB PSNR against 44-47 dB with one."""
    return ("( appsrc name=src is-live=true format=time do-timestamp=true max-buffers=2 leaky-type=downstream ! "
            "queue max-size-buffers=2 leaky=downstream ! "
            "x264enc tune=zerolatency sliced-threads=false threads=1 speed-preset=ultrafast bitrate=2500 "
            f"key-int-max={2 * fps} ! rtph264pay name=pay0 pt=96 config-interval=-1 )")


def serve(host: str, port: int, path: str, fps: int) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(host)
    server.set_service(str(port))
    if server.attach(None) == 0:
        sys.stderr.write(f"cannot listen on {host}:{port}\n")
        sys.exit(1)
    loop = GLib.MainLoop()
    state: dict = {"appsrc": None, "caps": None}
    lock = threading.Lock()

    def configure(_factory: object, media: object) -> None:
        with lock:
            state["appsrc"] = media.get_element().get_by_name("src")
            if state["caps"] is not None:
                state["appsrc"].set_property("caps", state["caps"])
        media.connect("unprepared", unprepared)
        _say("active 1")

    def unprepared(_media: object) -> None:
        with lock:
            state["appsrc"] = None
        _say("active 0")

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_pipeline(fps))
    factory.set_shared(True)
    factory.connect("media-configure", configure)
    server.get_mount_points().add_factory(path, factory)

    def feed() -> None:
        """Read the header (the caps), then push each frame to the media while one is active."""
        stdin = sys.stdin.buffer
        line = stdin.readline()
        if line:
            header = json.loads(line)
            size = header["width"] * header["height"] * 3 // 2
            caps = Gst.Caps.from_string(f"video/x-raw,format=I420,width={header['width']},"
                                        f"height={header['height']},framerate={fps}/1")
            with lock:
                state["caps"] = caps
                if state["appsrc"] is not None:
                    state["appsrc"].set_property("caps", caps)
            while True:
                frame = stdin.read(size)
                if len(frame) < size:
                    break
                with lock:
                    appsrc = state["appsrc"]
                if appsrc is not None:
                    buffer = Gst.Buffer.new_allocate(None, size, None)
                    buffer.fill(0, frame)
                    appsrc.emit("push-buffer", buffer)
        GLib.idle_add(loop.quit)

    threading.Thread(target=feed, daemon=True).start()
    _say("ready")
    loop.run()


def main() -> None:
    p = argparse.ArgumentParser(description="serve I420 frames read from stdin as an H.264 RTSP stream")
    p.add_argument("--host", required=True, help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True, help="mount point, e.g. /gestures")
    p.add_argument("--fps", type=int, required=True, help="nominal frame rate (frames are stamped as they come)")
    args = p.parse_args()
    serve(args.host, args.port, args.path, max(1, args.fps))


if __name__ == "__main__":
    main()
