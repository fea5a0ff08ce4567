"""What each ``--output`` costs per frame: none, a video file, RTSP with a client, the live page with 0
and 3 viewers.

One ``hagrid-edge run`` per row, the same harness for each: the shipped sample photos written to its
stdin as JPEGs at ``--fps`` (each photo one second, looping), for ``--seconds``; the viewers (an
RTSP client decoding the stream with OpenCV's FFmpeg, or browsers' requests: the MJPEG stream and the
events stream each) run in this process, so their own work is not counted. Per row, over the time
after ``--warmup``: the frame rate, CPU time per frame of the run and its children (the RTSP server
process included, from ``/proc``), its ratio to the row without outputs measured in the same
invocation (machines are noisy: compare ratios, not milliseconds across invocations), the loop's
latency (capture to the end of the frame's work, from the run's summary), the render thread's time
per drawn frame, and the frames the network outputs sent and dropped.

    nice -n 10 python benchmarks/bench_outputs.py --fps 30 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from hagrid_edge.benchmarks.bench_soak import feed_stdin, sample_photos
from hagrid_edge.paths import DEFAULT_MODELS, write_text_atomic

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its living descendants, from /proc."""
    procs: dict[int, tuple[int, float]] = {}  # pid -> (parent, CPU s)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        procs[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)  # ppid, utime + stime
    tree, grew = {pid}, True
    while grew:
        more = {p for p, (parent, _) in procs.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(procs[p][1] for p in tree if p in procs)


def watch_mjpeg(url: str, stop: threading.Event) -> None:
    """A viewer of the page's video: takes the stream as fast as it comes."""
    with urllib.request.urlopen(url, timeout=10) as r:
        while not stop.is_set() and r.read(1 << 16):
            pass


def watch_events(url: str, stop: threading.Event) -> None:
    with urllib.request.urlopen(url, timeout=10) as r:
        while not stop.is_set() and r.readline():
            pass


def watch_rtsp(url: str, stop: threading.Event, frames: list[int]) -> None:
    """An RTSP client: decodes every frame (OpenCV's FFmpeg over TCP, as hagrid-edge's own source)."""
    import cv2

    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    while not stop.is_set():
        ok, _ = cap.read()
        if not ok:
            break
        frames[0] += 1
    cap.release()


def measure(name: str, outputs: list[str], viewers: int, args: argparse.Namespace, photos: list, tmp: Path) -> dict:
    """One run with ``outputs`` and ``viewers`` connected once it serves; its figures after the warm-up."""
    summary_path = tmp / f"summary-{len(os.listdir(tmp))}.json"
    cmd = [sys.executable, "-m", "hagrid_edge.cli", "run", "--engine", args.engine, "--source", "-", "--headless",
           "--threads", str(args.threads), "--summary", str(summary_path), "--status-every", "0.5"]
    for out in outputs:
        cmd += ["--output", out]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()
    samples: list[tuple[float, float, int]] = []  # (time, CPU s, frames) at each status line
    log: list[str] = []

    def read_log() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if " status {" in line:
                samples.append((time.monotonic(), tree_cpu_s(proc.pid), json.loads(line.split(" status ", 1)[1])["frames"]))
            else:
                log.append(line)

    threading.Thread(target=read_log, daemon=True).start()
    threading.Thread(target=feed_stdin, args=(proc.stdin, photos, args.fps, stop), daemon=True).start()
    t0 = time.monotonic()
    servers = sum("://" in out for out in outputs)
    while sum(("serving H.264" in line or "live page at" in line) for line in log) < servers:
        if proc.poll() is not None or time.monotonic() - t0 > 60:
            raise SystemExit(f"{name}: the run did not start serving:\n" + "\n".join(log[-10:]))
        time.sleep(0.1)
    watchers, rtsp_frames = [], [0]
    for out in outputs:
        if out.startswith("http://"):
            for _ in range(viewers):
                watchers += [threading.Thread(target=watch_mjpeg, args=(out + "/stream.mjpg", stop), daemon=True),
                             threading.Thread(target=watch_events, args=(out + "/events", stop), daemon=True)]
        elif out.startswith("rtsp://"):
            watchers.append(threading.Thread(target=watch_rtsp, args=(out, stop, rtsp_frames), daemon=True))
    for w in watchers:
        w.start()
    time.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
    stop.set()
    time.sleep(0.2)
    proc.stdin.close()  # type: ignore[union-attr]  # the source ends: the run finishes and writes its summary
    if proc.wait(60) != 0:
        raise SystemExit(f"{name}: the run failed:\n" + "\n".join(log[-10:]))
    summary = json.loads(summary_path.read_text())
    steady = [s for s in samples if s[0] - t0 >= args.warmup]
    (ta, ca, fa), (tb, cb, fb) = steady[0], steady[-1]
    stages = summary["stage_ms"]
    row = {"row": name, "fps": round((fb - fa) / (tb - ta), 1), "cpu_ms_per_frame": round((cb - ca) / (fb - fa) * 1e3, 2),
           "latency_ms_p50": stages["latency"]["p50"], "latency_ms_p99": stages["latency"]["p99"],
           "render_ms_p50": stages.get("render", {}).get("p50"), "frames": summary["frames"]}
    for figures in summary.get("outputs", {}).values():
        row["sent"], row["dropped"] = figures["frames_sent"], figures["frames_dropped"]
    if rtsp_frames[0]:
        row["client_decoded"] = rtsp_frames[0]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the source (default 30)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each run (default 20)")
    p.add_argument("--warmup", type=float, default=6.0, help="seconds left out at each run's start (default 6)")
    p.add_argument("--engine", default=str(DEFAULT_MODELS / "gesture_detector.onnx"))
    p.add_argument("--threads", type=int, default=1, help="runtime threads of the run (default 1)")
    p.add_argument("--report", help="write the rows as JSON here")
    args = p.parse_args(argv)

    photos = sample_photos()
    with tempfile.TemporaryDirectory(prefix="hagrid-bench-outputs.") as tmp:
        plan = [("none", [], 0),
                ("file .mp4", [str(Path(tmp) / "out.mp4")], 0),
                ("rtsp, 1 client", [f"rtsp://127.0.0.1:{free_port()}/gestures"], 0),
                ("page, 0 viewers", [f"http://127.0.0.1:{free_port()}"], 0),
                ("page, 3 viewers", [f"http://127.0.0.1:{free_port()}"], 3)]
        rows = [measure(name, outputs, viewers, args, photos, Path(tmp)) for name, outputs, viewers in plan]
    base = rows[0]["cpu_ms_per_frame"]
    print(f"{args.engine}, {args.threads} thread(s), source at {args.fps:g} fps, {args.seconds:g} s per row "
          f"({args.warmup:g} s warm-up left out)")
    print(f"{'output':16s} {'fps':>5s} {'CPU ms/frame':>12s} {'x none':>7s} {'latency p50':>11s} {'p99':>6s} "
          f"{'render p50':>10s} {'sent':>6s} {'dropped':>7s}")
    for r in rows:
        r["cpu_ratio"] = round(r["cpu_ms_per_frame"] / base, 2) if base else None
        render = "-" if r["render_ms_p50"] is None else f"{r['render_ms_p50']:.2f}"
        print(f"{r['row']:16s} {r['fps']:5.1f} {r['cpu_ms_per_frame']:12.2f} {r['cpu_ratio']:7.2f} "
              f"{r['latency_ms_p50']:11.2f} {r['latency_ms_p99']:6.1f} {render:>10s} {r.get('sent', '-'):>6} "
              f"{r.get('dropped', '-'):>7}")
    if args.report:
        write_text_atomic(args.report, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
