"""Soak: ``hagrid-edge run`` for many minutes on a looping live source; memory and queues must stay flat.

The source loops the shipped sample photos (``assets/hagrid-sample``, 18 real HaGRID photos, each
shown for one second): by default a loopback RTSP camera this benchmark starts (GStreamer's
rtsp-server, H.264, ``benchmarks/rtsp_loopback.py``), or with ``--source stdin`` the same photos as
JPEGs written to the run's stdin at the frame rate (no GStreamer needed). The run logs a status line
(``--status-every``) with its resident memory and queue lengths; at the end it is stopped with
SIGINT and its summary and events are read back.

Reported: RSS over time and its growth after the warm-up (the per-stage windows fill in the first
minutes), queue lengths (capture, render, hooks), and dropped events (gesture events counted by the
run but missing from its events file, plus hook runs skipped). Exit 1 when RSS grew by ``--max-rss-growth``
percent or more after the warm-up, when the queues grew (mean of the later half of the samples
more than one item above the earlier half), or when events were dropped.

    nice -n 10 python benchmarks/bench_soak.py --minutes 30 --report out/soak.json
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hagrid_edge.paths import DEFAULT_MODELS, write_text_atomic

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "hagrid-sample" / "hagrid_dataset_512"
SIZE = (640, 480)


def sample_photos(folder: Path = SAMPLE) -> list:
    """The sample photos letterboxed onto 640x480 frames (RGB), in path order."""
    from hagrid_edge.images import read_rgb
    from hagrid_edge.processing import letterbox

    return [letterbox(read_rgb(p), *SIZE, pad_value=0)[0] for p in sorted(folder.rglob("*.jpg"))]


def feed_stdin(stream: object, photos: list, fps: float, stop: threading.Event) -> None:
    """Write the photos as JPEGs, each for one second at ``fps``, in a loop, until ``stop`` or a closed pipe."""
    import cv2

    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(p, cv2.COLOR_RGB2BGR))[1].tobytes() for p in photos]
    k, period, due = 0, 1.0 / fps, time.monotonic()
    try:
        while not stop.is_set():
            stream.write(jpegs[int(k // fps) % len(jpegs)])  # type: ignore[attr-defined]
            stream.flush()  # type: ignore[attr-defined]
            k += 1
            due = max(due + period, time.monotonic() - period)
            time.sleep(max(0.0, due - time.monotonic()))
    except (BrokenPipeError, ValueError, OSError):
        pass


def read_status(stderr: object, samples: list[dict], log: list[str]) -> None:
    """Collect the run's status lines (and keep the rest of its log)."""
    for line in stderr:  # type: ignore[attr-defined]
        if " status {" in line:
            samples.append(json.loads(line.split(" status ", 1)[1]))
        else:
            log.append(line.rstrip())


def judge(samples: list[dict], warmup_min: float, max_growth: float) -> dict:
    """RSS growth after the warm-up and queue growth, from the status samples."""
    after = [s for s in samples if s["wall_s"] >= warmup_min * 60] or samples[-1:]
    rss0, rss1 = after[0]["rss_mb"], after[-1]["rss_mb"]
    growth = (rss1 - rss0) / rss0 * 100 if rss0 else 0.0
    hours = (after[-1]["wall_s"] - after[0]["wall_s"]) / 3600
    queued = [sum(s["queues"].values()) for s in after]
    half = len(queued) // 2
    queue_growth = (sum(queued[half:]) / len(queued[half:]) - sum(queued[:half]) / half) if half else 0.0
    return {"rss_start_mb": rss0, "rss_end_mb": rss1, "rss_growth_pct": round(growth, 2),
            "rss_mb_per_hour": round((rss1 - rss0) / hours, 1) if hours > 0 else None,
            "queue_max": max(queued), "queue_growth": round(queue_growth, 2),
            "rss_ok": growth < max_growth, "queue_ok": queue_growth <= 1.0}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long the run goes (default 30)")
    p.add_argument("--sample-every", type=float, default=60.0, help="seconds between samples (default 60)")
    p.add_argument("--warmup", type=float, default=5.0, help="minutes before RSS growth is counted (default 5)")
    p.add_argument("--source", choices=("rtsp", "stdin"), default="rtsp")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the looping source (default 30)")
    p.add_argument("--engine", default=str(DEFAULT_MODELS / "hand_detector.onnx"))
    p.add_argument("--classifier", default=str(DEFAULT_MODELS / "crops_classifier.onnx"))
    p.add_argument("--threads", type=int, default=1, help="runtime threads of the run (default 1)")
    p.add_argument("--max-rss-growth", type=float, default=5.0, help="percent (default 5)")
    p.add_argument("--report", help="write the figures as JSON here")
    return p.parse_args(argv)


def _soak(args: argparse.Namespace, tmp: Path) -> tuple[list[dict], dict, list[dict]] | None:
    """Run ``run`` on the looping source for ``--minutes``: its status samples, summary and event lines
    (None, with the run's last log lines printed, when it failed)."""
    photos = sample_photos()
    events, summary_path = tmp / "events.jsonl", tmp / "summary.json"
    server, stop_feed = None, threading.Event()
    if args.source == "rtsp":
        from hagrid_edge.benchmarks.rtsp_loopback import LoopbackServer

        server = LoopbackServer(photos, fps=args.fps, hold=round(args.fps)).start()
        source = server.url
    else:
        source = "-"
    cmd = [sys.executable, "-m", "hagrid_edge.cli", "run", "--engine", args.engine, "--source", source,
           "--headless", "--events", str(events), "--summary", str(summary_path),
           "--status-every", str(args.sample_every), "--threads", str(args.threads)]
    if args.classifier:
        cmd += ["--classifier", args.classifier]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if source == "-" else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=source != "-")
    samples: list[dict] = []
    log: list[str] = []
    if source == "-":
        import io

        stderr = io.TextIOWrapper(proc.stderr)  # type: ignore[arg-type]
        threading.Thread(target=feed_stdin, args=(proc.stdin, photos, args.fps, stop_feed), daemon=True).start()
    else:
        stderr = proc.stderr
    reader = threading.Thread(target=read_status, args=(stderr, samples, log), daemon=True)
    reader.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < args.minutes * 60 and proc.poll() is None:
            time.sleep(1.0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        stop_feed.set()
        if proc.poll() is None:
            proc.kill()
        if server is not None:
            server.close()
    reader.join(10)
    if proc.returncode != 0 or not summary_path.exists() or not samples:
        print("\n".join(log[-20:]), file=sys.stderr)
        print(f"bench_soak: the run failed (exit {proc.returncode}, {len(samples)} status samples)", file=sys.stderr)
        return None
    return samples, json.loads(summary_path.read_text()), [json.loads(x) for x in events.read_text().splitlines()]


def _print_table(samples: list[dict], verdict: dict, summary: dict, warmup: float, dropped: int) -> None:
    print(f"{'min':>6} {'RSS MB':>8} {'queues':>8} {'frames':>8} {'FPS':>6} {'events':>7}")
    for s in samples:
        print(f"{s['wall_s'] / 60:6.1f} {s['rss_mb']:8.1f} {sum(s['queues'].values()):8d} {s['frames']:8d} "
              f"{s['fps_now']:6.1f} {s['events']:7d}")
    print(f"RSS after {warmup:g} min warm-up: {verdict['rss_start_mb']} -> {verdict['rss_end_mb']} MB "
          f"({verdict['rss_growth_pct']:+.2f} %, {verdict['rss_mb_per_hour']} MB/h); queue max {verdict['queue_max']}, "
          f"growth {verdict['queue_growth']:+.2f}; events {summary['events']}, dropped {dropped}; "
          f"{summary['frames']} frames at {summary['fps']} FPS, live frames dropped {summary['dropped_frames']}, "
          f"source lost {summary['source_lost']}")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    with tempfile.TemporaryDirectory(prefix="hagrid-soak.") as tmp:
        result = _soak(args, Path(tmp))
    if result is None:
        return 1
    samples, summary, lines = result
    gesture_lines = [e for e in lines if e["event"] in ("start", "end")]
    dropped = summary["events"] - len(gesture_lines) + summary["hooks_skipped"]
    verdict = judge(samples, args.warmup, args.max_rss_growth)
    report = {"source": args.source, "fps": args.fps, "minutes": args.minutes, "threads": args.threads,
              "engine": args.engine, "classifier": args.classifier, "samples": samples, **verdict,
              "dropped_events": dropped, "summary": summary,
              "unended_gestures": sum(e["event"] == "start" for e in gesture_lines)
              - sum(e["event"] == "end" for e in gesture_lines)}
    _print_table(samples, verdict, summary, args.warmup, dropped)
    if args.report:
        write_text_atomic(args.report, json.dumps(report, indent=1) + "\n")
    failures = []
    if not verdict["rss_ok"]:
        failures.append(f"RSS grew {verdict['rss_growth_pct']:+.2f} % after the {args.warmup:g} min warm-up "
                        f"({verdict['rss_start_mb']} -> {verdict['rss_end_mb']} MB), limit {args.max_rss_growth:g} %")
    if not verdict["queue_ok"]:
        failures.append(f"queues grew by {verdict['queue_growth']:+.2f} items (later half against earlier half)")
    if dropped:
        failures.append(f"{dropped} events dropped")
    for f in failures:
        print(f"bench_soak: FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
