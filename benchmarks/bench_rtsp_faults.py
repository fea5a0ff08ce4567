"""Faults of a live RTSP camera against ``hagrid-edge run``: freeze the server, kill it, restart it.

A loopback RTSP camera (``rtsp_loopback.py``: the shipped sample photos as H.264) feeds
``hagrid-edge run --events -``; the benchmark reads the events as they are written and plays:

1. freeze (SIGSTOP: the connection stays open, nothing arrives) -> time until ``source_lost``;
   then kill the frozen server and start a new one -> time until ``source_back`` (frames again);
2. kill (connection reset) -> time until ``source_lost``; restart after ``--down`` s -> time until
   ``source_back``.

Also reported: gestures open at each loss and whether they ended with it, the reconnects and
attempts, outage and FPS from the run's summary. The back-off between attempts starts at 0.5 s and
doubles up to 10 s, so recovery after a long outage can take up to 10 s after the server is back,
plus the wait for the next keyframe (``--gop``).

    python benchmarks/bench_rtsp_faults.py --fps 10 --report out/rtsp_faults.json
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hagrid_edge.benchmarks.bench_soak import sample_photos
from hagrid_edge.benchmarks.rtsp_loopback import LoopbackServer
from hagrid_edge.paths import DEFAULT_MODELS, write_text_atomic


def wait_event(events: queue.Queue, kind: str, timeout: float, seen: list[dict]) -> dict | None:
    """The next event of ``kind`` within ``timeout`` s (every event read on the way goes into ``seen``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            event = events.get(timeout=max(0.01, deadline - time.time()))
        except queue.Empty:
            return None
        seen.append(event)
        if event["event"] == kind:
            return event
    return None


def open_at(seen: list[dict], lost: dict) -> tuple[int, int]:
    """Gestures open when ``lost`` happened, and how many of them ended at its time."""
    i = seen.index(lost)
    opened = sum(e["event"] == "start" for e in seen[:i]) - sum(e["event"] == "end" for e in seen[:i])
    ended = sum(1 for e in seen[i + 1:i + 1 + opened] if e["event"] == "end" and e["time"] == lost["time"])
    return opened, ended


def fault(server: LoopbackServer, events: queue.Queue, seen: list[dict], kind: str, down_s: float) -> dict:
    """One fault: freeze or kill, then a fresh server ``down_s`` s after the loss was noticed."""
    t0 = time.time()
    if kind == "freeze":
        server.freeze()
    else:
        server.kill()
    lost = wait_event(events, "source_lost", 60, seen)
    if lost is None:
        return {"fault": kind, "error": "no source_lost within 60 s"}
    time.sleep(down_s)
    t_restart = time.time()
    server.restart()
    back = wait_event(events, "source_back", 60, seen)
    opened, ended = open_at(seen, lost)
    row = {"fault": kind, "noticed_s": round(lost["time"] - t0, 2), "reason": lost.get("reason", ""),
           "gestures_open": opened, "gestures_ended_at_loss": ended, "down_s": round(t_restart - t0, 2)}
    if back is None:
        return {**row, "error": "no source_back within 60 s of the restart"}
    return {**row, "recovered_s": round(back["time"] - t_restart, 2), "outage_s": back.get("outage_s")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--gop", type=int, help="frames between keyframes (default: 2 s of frames)")
    p.add_argument("--down", type=float, default=2.0, help="seconds the server stays down after the loss")
    p.add_argument("--engine", default=str(DEFAULT_MODELS / "hand_detector.onnx"))
    p.add_argument("--classifier", default=str(DEFAULT_MODELS / "crops_classifier.onnx"))
    p.add_argument("--report", help="write the figures as JSON here")
    args = p.parse_args(argv)

    events: queue.Queue = queue.Queue()
    seen: list[dict] = []
    with LoopbackServer(sample_photos(), fps=args.fps, hold=round(args.fps), gop=args.gop) as server, \
            tempfile.TemporaryDirectory(prefix="hagrid-faults.") as tmp:
        summary_path = Path(tmp) / "summary.json"
        t_start = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "hagrid_edge.cli", "run", "--engine", args.engine,
                                 "--classifier", args.classifier, "--source", server.url, "--headless",
                                 "--events", "-", "--summary", str(summary_path), "--threads", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def read_events() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                events.put(json.loads(line))

        threading.Thread(target=read_events, daemon=True).start()
        log: list[str] = []
        threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
        try:
            first = wait_event(events, "start", 60, seen)  # a gesture seen: frames flow
            rows = [{"fault": "start", "first_gesture_s": round(first["time"] - t_start, 2) if first else None}]
            for kind in ("freeze", "kill"):
                time.sleep(3.0)  # frames again for a while (gestures start)
                rows.append(fault(server, events, seen, kind, args.down))
            time.sleep(2.0)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for row in rows:
        print("  ".join(f"{k} {v}" for k, v in row.items()))
    keys = ("frames", "fps", "wall_s", "outage_s", "source_lost", "stale_frames", "reconnects", "reconnect_attempts")
    print("summary: " + ", ".join(f"{k} {summary.get(k)}" for k in keys))
    if args.report:
        write_text_atomic(args.report, json.dumps({"fps": args.fps, "rows": rows, "summary": summary}, indent=1) + "\n")
    ok = proc.returncode == 0 and all("error" not in r for r in rows)
    if not ok:
        print("\n".join(log[-20:]), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
