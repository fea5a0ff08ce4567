"""Frame age of a live RTSP source per decoder thread count, and what a frozen server does to each.

A loopback RTSP camera (``rtsp_loopback.py``: the shipped sample photos as H.264, each frame stamped
with the wall-clock time it was sent) is read through hagrid-edge's own source and capture thread
(``VideoCaptureSource`` + ``Capture``) with 1, 2, 4 ... FFmpeg decoder threads. Per setting:
the age of the frames the capture hands over (read time minus the stamp; same machine clock), then
the server is frozen (SIGSTOP) and we record when the capture declares the source lost and the
oldest frame it handed over after the freeze (a decoder holding frames releases them one per read
timeout; the capture must not pass them on as current).

    python benchmarks/bench_rtsp_lag.py --fps 10 30 --decoder-threads 1 2 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from hagrid_edge.benchmarks.bench_soak import sample_photos
from hagrid_edge.benchmarks.rtsp_loopback import LoopbackServer, stamp_age_s
from hagrid_edge.paths import write_text_atomic


def measure(url: str, threads: int, seconds: float, freeze: object | None) -> dict:
    """Frame ages over ``seconds`` (after 2 s to settle), then, with ``freeze`` (a callable), the stall."""
    import cv2

    from hagrid_edge.deploy.common.capture import Capture
    from hagrid_edge.deploy.common.sources import VideoCaptureSource

    source = VideoCaptureSource(url, url, live=True, api=cv2.CAP_FFMPEG, decoder_threads=threads)
    t_open = time.monotonic()
    source.open()
    capture = Capture(source).start()
    first = capture.get(timeout=30)
    startup = time.monotonic() - t_open
    ages: list[float] = []
    settle = time.monotonic() + 2.0
    while time.monotonic() < settle + seconds:
        frame = capture.get(timeout=10)
        if frame is None:
            break
        if time.monotonic() >= settle:
            ages.append(stamp_age_s(frame.image, frame.time))
    row = {"decoder_threads": threads, "first_frame_s": round(startup, 2) if first is not None else None,
           "frames": len(ages), "age_ms_p50": round(float(np.median(ages)) * 1e3, 1),
           "age_ms_p90": round(float(np.percentile(ages, 90)) * 1e3, 1), "age_ms_max": round(max(ages) * 1e3, 1)}
    if freeze is not None:
        capture.take_events()
        frozen_at = time.time()
        freeze()  # type: ignore[operator]
        oldest, lost_at = 0.0, None
        while lost_at is None and time.time() - frozen_at < 30:
            try:
                frame = capture.get(timeout=0.25)
                if frame is not None:
                    oldest = max(oldest, stamp_age_s(frame.image, frame.time))
            except TimeoutError:
                pass
            lost = [e for e in capture.take_events() if e.kind == "source_lost"]
            lost_at = lost[0].time if lost else None
        row.update({"lost_after_s": round(lost_at - frozen_at, 2) if lost_at else None,
                    "oldest_frame_after_freeze_s": round(oldest, 2), "stale_frames_refused": capture.stats.stale})
    capture.stop()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fps", type=float, nargs="+", default=[10.0, 30.0])
    p.add_argument("--decoder-threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=6.0, help="frames measured per setting (default 6 s)")
    p.add_argument("--no-freeze", action="store_true", help="skip the frozen-server part")
    p.add_argument("--report", help="write the rows as JSON here")
    args = p.parse_args(argv)

    photos = sample_photos()
    rows = []
    print(f"{'fps':>4} {'threads':>7} {'first s':>7} {'age p50':>8} {'p90':>6} {'max':>6} {'lost after s':>12} "
          f"{'oldest after freeze s':>21} {'stale refused':>13}")
    for fps in args.fps:
        for threads in args.decoder_threads:
            with LoopbackServer(photos, fps=fps, hold=round(fps)) as server:  # a fresh server per setting
                row = {"fps": fps, **measure(server.url, threads, args.seconds,
                                             None if args.no_freeze else server.freeze)}
            rows.append(row)
            print(f"{fps:4g} {threads:7d} {row['first_frame_s']:7} {row['age_ms_p50']:8} {row['age_ms_p90']:6} "
                  f"{row['age_ms_max']:6} {row.get('lost_after_s', '-'):>12} "
                  f"{row.get('oldest_frame_after_freeze_s', '-'):>21} {row.get('stale_frames_refused', '-'):>13}",
                  flush=True)
    if args.report:
        write_text_atomic(args.report, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
