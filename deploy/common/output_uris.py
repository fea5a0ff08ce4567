"""``--output`` by URI, one table of schemes, as ``sources.py`` is for ``--source``.

| URI                              | output                                                        |
|----------------------------------|---------------------------------------------------------------|
| ``out.mp4`` (.mp4 .mov .mkv .avi) | the annotated video, every frame (``outputs.VideoOutput``)   |
| ``rtsp://[HOST][:PORT]/PATH``    | H.264 over RTSP, GStreamer's rtsp-server (``output_rtsp.py``); no HOST: every interface, PORT 8554 |
| ``http://[HOST][:PORT]``         | a live page: MJPEG video, events, FPS, stage times (``output_http.py``); no HOST: 127.0.0.1 only, PORT 8080 |

``--output`` may be given several times. The network outputs take the newest annotated frame only
(a buffer of one, the oldest dropped) and encode on their own threads or processes, so a slow or
absent viewer never slows the run: it misses frames, which are counted (``stats``). ``check_output``
refuses a bad URI before any model loads: an unknown scheme, a host that does not resolve or is not
this machine's, a port in use, a file that is not a video.
"""

from __future__ import annotations

import contextlib
import errno
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np

from hagrid_edge.deploy.common.capture import SourceEvent
from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.errors import HagridEdgeError

# What a live page shows besides the video: {"fps", "frames", "stage_ms"}, read when it is sent.
LiveStats = Callable[[], dict]


class FrameSink(Protocol):
    """Where the render thread hands each annotated (BGR) frame."""

    uri: str

    def wants_frames(self) -> bool:
        """False while nobody watches a network output: the frame need not be drawn for it."""
        ...

    def write(self, bgr: np.ndarray) -> None: ...

    def close(self) -> None: ...


class NetworkOutput(FrameSink, Protocol):
    """A server: it is told every event (the page shows them) and counts what its viewers missed."""

    def publish(self, event: GestureEvent | SourceEvent) -> None: ...

    def stats(self) -> dict:
        """``frames_sent`` and ``frames_dropped`` (newer frames replaced them before they were sent) so far."""
        ...


@dataclass(frozen=True)
class OutputTarget:
    """A parsed ``--output``: the scheme (``file`` for a path, ``path`` its file) and, for a server, where
    it listens."""

    uri: str
    scheme: str
    host: str = ""  # the address to listen on, as given (or the scheme's default)
    port: int = 0
    path: str = ""


@dataclass(frozen=True)
class Scheme:
    usage: str  # how the URI is written, for messages and --help
    default_host: str  # listened on when the URI names no host
    default_port: int
    path_required: bool  # rtsp: the mount point; http: the page is served at / only
    requirement: Callable[[str], None]  # raises naming the URI when this machine cannot serve it
    opener: Callable[[OutputTarget, float, LiveStats], FrameSink]


def _no_requirement(uri: str) -> None:
    pass


def _open_file(target: OutputTarget, fps: float, stats: LiveStats) -> FrameSink:
    from hagrid_edge.deploy.common.outputs import VideoOutput

    return VideoOutput(target.path, fps)


def _open_rtsp(target: OutputTarget, fps: float, stats: LiveStats) -> FrameSink:
    from hagrid_edge.deploy.common.output_rtsp import RtspOutput

    return RtspOutput(target, fps)


def _rtsp_requirement(uri: str) -> None:
    from hagrid_edge.deploy.common.output_rtsp import require_gstreamer

    require_gstreamer(uri)


def _open_http(target: OutputTarget, fps: float, stats: LiveStats) -> FrameSink:
    from hagrid_edge.deploy.common.output_http import LivePage

    return LivePage(target, stats)


SCHEMES: dict[str, Scheme] = {
    "file": Scheme("a video file (.mp4, .mov, .mkv, .avi)", "", 0, False, _no_requirement, _open_file),  # or file://
    "rtsp": Scheme("rtsp://[HOST][:PORT]/PATH", "0.0.0.0", 8554, True, _rtsp_requirement, _open_rtsp),
    "http": Scheme("http://[HOST][:PORT]", "127.0.0.1", 8080, False, _no_requirement, _open_http),
}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def usage() -> str:
    return ", ".join(s.usage for s in SCHEMES.values())


def parse_output(uri: str) -> OutputTarget:
    """What ``uri`` names; ``HagridEdgeError`` naming it when it is malformed or of an unknown scheme."""
    m = _SCHEME.match(uri)
    if m is None or m.group(1).lower() == "file":
        from hagrid_edge.deploy.common.outputs import check_video_path

        path = uri if m is None else uri[m.end():]
        check_video_path(path)
        return OutputTarget(uri, "file", path=path)
    scheme = SCHEMES.get(m.group(1).lower())
    if scheme is None:
        raise HagridEdgeError(f"--output {uri}: unknown scheme {m.group(1)}:// (use {usage()})")
    parts = urlsplit(uri)
    try:
        port = scheme.default_port if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise HagridEdgeError(f"--output {uri}: the port must be a number in 1-65535")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise HagridEdgeError(f"--output {uri}: write it as {scheme.usage}")
    path = parts.path
    if scheme.path_required and path.strip("/") == "":
        raise HagridEdgeError(f"--output {uri}: name the stream, e.g. {m.group(0)}{parts.netloc}/gestures")
    if not scheme.path_required and path not in ("", "/"):
        raise HagridEdgeError(f"--output {uri}: the page is served at /, write it as {scheme.usage}")
    return OutputTarget(uri, m.group(1).lower(), parts.hostname or scheme.default_host, port, path)


def parse_outputs(output: str | Sequence[str] | None) -> list[OutputTarget]:
    """Every ``--output`` parsed; two servers on one port are refused here, before either listens."""
    uris = [output] if isinstance(output, str) else list(output or [])
    targets = [parse_output(uri) for uri in uris]
    ports: dict[int, str] = {}
    for t in targets:
        if t.scheme != "file" and ports.setdefault(t.port, t.uri) != t.uri:
            raise HagridEdgeError(f"--output {t.uri}: port {t.port} is also --output {ports[t.port]}'s")
    return targets


def resolve(target: OutputTarget) -> str:
    """The IPv4 address ``target`` listens on; ``HagridEdgeError`` when its host does not resolve."""
    try:
        return socket.getaddrinfo(target.host, target.port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (socket.gaierror, UnicodeError):
        raise HagridEdgeError(f"--output {target.uri}: the host {target.host} does not resolve "
                              "(to an IPv4 address)") from None


def bind_error(target: OutputTarget, e: OSError) -> HagridEdgeError:
    """The one-line reason a server of ``target`` cannot listen."""
    if e.errno == errno.EADDRINUSE:
        why = f"port {target.port} is in use on {target.host}"
    elif e.errno == errno.EADDRNOTAVAIL:
        why = f"{target.host} is not an address of this machine"
    elif e.errno == errno.EACCES:
        why = f"no permission to listen on port {target.port} (ports below 1024 need root)"
    else:
        why = f"cannot listen on {target.host}:{target.port} ({e.strerror})"
    return HagridEdgeError(f"--output {target.uri}: {why}")


def check_output(uri: str) -> OutputTarget:
    """``parse_output``, then for a server: its host resolves to an address of this machine, its port is
    free (a trial bind, as the server will: address reuse on) and this machine can serve the scheme."""
    target = parse_output(uri)
    if target.scheme == "file":
        return target
    address = resolve(target)
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, target.port))
            s.listen(1)
        except OSError as e:
            raise bind_error(target, e) from None
    SCHEMES[target.scheme].requirement(uri)
    return target


def open_output(target: OutputTarget, fps: float, stats: LiveStats) -> FrameSink:
    """The output ``target`` names, opened (a server listens from here on)."""
    return SCHEMES[target.scheme].opener(target, fps, stats)
