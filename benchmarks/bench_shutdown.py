"""Shutdown: how fast ``hagrid-edge run`` stops, and which events it keeps, under SIGTERM and SIGKILL
while its ``--on-gesture`` hooks do nothing, are slow, or hang.

The run works through a video of the shipped sample photos (``assets/hagrid-sample``, 18 real
HaGRID photos, each held ``--hold`` frames, the whole looped ``--repeat`` times) with the shipped
main-job pair by default. Every hook call first appends the event it got to a file, then behaves:

| behaviour | the hook command after recording the event                     |
|-----------|----------------------------------------------------------------|
| none      | nothing (``true``)                                             |
| slow      | ``sleep 2``: each call longer than the gap between gestures    |
| hanging   | ``sleep 3600`` deaf to SIGTERM, plus a child in the background  |

Once the hooks have seen ``--after`` events the run gets the signal. Reported per case: seconds from
the signal to the process's exit, the exit status, the events the hooks had been handed (which the
run had therefore reported) and how many of them are in ``--events`` (must be all, SIGKILL
included), whether the events file holds only whole lines, whether the video is in place (SIGTERM),
the hook counters of the summary, and hook processes still alive one second after the exit (SIGKILL
leaves those of running hooks: their process groups are their own, and a supervisor that kills the
whole control group, as systemd and docker do, takes them). Exit 1 when an event the run reported is
missing, a line is torn, or a SIGTERM shutdown took more than ``--bound`` seconds.

    python benchmarks/bench_shutdown.py --report out/shutdown.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hagrid_edge.paths import DEFAULT_MODELS, write_text_atomic

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "hagrid-sample" / "hagrid_dataset_512"
SIZE = (640, 480)
BEHAVIOURS = {"none": "true", "slow": "sleep 2", "hanging": 'trap "" TERM; sleep 3600 & sleep 3600'}
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


def make_video(path: Path, hold: int, repeat: int, fps: float = 15.0) -> int:
    """The sample photos letterboxed to 640x480, each held ``hold`` frames, ``repeat`` times; the frame count."""
    import cv2

    from hagrid_edge.images import read_rgb
    from hagrid_edge.processing import letterbox

    frames = [cv2.cvtColor(letterbox(read_rgb(p), *SIZE, pad_value=0)[0], cv2.COLOR_RGB2BGR)
              for p in sorted(SAMPLE.rglob("*.jpg"))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
    for _ in range(repeat):
        for frame in frames:
            for _ in range(hold):
                writer.write(frame)
    writer.release()
    return len(frames) * hold * repeat


def group_members(pgid: int, settle_s: float = 0.0) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (Linux /proc), after up to ``settle_s`` for
    killed ones to go."""
    deadline = time.monotonic() + settle_s
    while True:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
        if not members or time.monotonic() >= deadline:
            return members
        time.sleep(0.05)


def read_lines(path: Path) -> tuple[list[dict], bool]:
    """The JSON lines of ``path`` and whether every line was whole."""
    if not path.exists():
        return [], True
    events, whole = [], True
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            whole = False
    return events, whole


def one_case(args: argparse.Namespace, video: Path, behaviour: str, sig: str, work: Path) -> dict:
    """One run, signalled once its hooks saw ``--after`` events."""
    case = work / f"{behaviour}-{sig}"
    case.mkdir()
    ev, seen, pids, out, summary = (case / "events.jsonl", case / "hooks.jsonl", case / "pids", case / "out.mp4",
                                    case / "summary.json")
    hook = (f"sh -c 'echo $$ >> {pids}; printf \"%s\\n\" \"$HAGRID_EDGE_EVENT\" >> {seen}; "
            f"{BEHAVIOURS[behaviour]}'")
    cmd = [sys.executable, "-m", "hagrid_edge.cli", "run", "--engine", args.engine, "--source", str(video),
           "--headless", "--events", str(ev), "--output", str(out), "--summary", str(summary),
           "--threads", str(args.threads), "--on-gesture", hook]
    if args.classifier:
        cmd += ["--classifier", args.classifier]
    log = case / "stderr.txt"  # a file, not a pipe: hook processes share it and may outlive the run
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    t_start = time.monotonic()
    while proc.poll() is None and time.monotonic() - t_start < args.timeout:
        if seen.exists() and len(seen.read_text().splitlines()) >= args.after:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        return {"behaviour": behaviour, "signal": sig, "error": f"the run ended first (exit {proc.returncode}): "
                + " | ".join(log.read_text().splitlines()[-2:])}
    reported, _ = read_lines(seen)  # what the run had reported when the signal left
    t0 = time.monotonic()
    proc.send_signal(SIGNALS[sig])
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stop_s = time.monotonic() - t0
    stderr = log.read_text()
    time.sleep(1.0)
    groups = [int(p) for p in pids.read_text().split()] if pids.exists() else []
    left = sorted({m for g in groups for m in group_members(g)})
    for g in groups:  # clean up after SIGKILL: the hooks' own process groups
        try:
            os.killpg(g, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    kept, whole = read_lines(ev)
    row = {"behaviour": behaviour, "signal": sig, "stop_s": round(stop_s, 3), "exit": proc.returncode,
           "events_reported": len(reported), "reported_kept": sum(e in kept for e in reported),
           "events_in_file": len(kept), "whole_lines": whole, "video_in_place": out.exists(),
           "hook_processes_left": len(left), "stderr_tail": stderr.strip().splitlines()[-1:] if stderr else []}
    if summary.exists():
        s = json.loads(summary.read_text())
        row.update({k: s[k] for k in ("frames", "hooks_started", "hooks_skipped", "hooks_timed_out",
                                      "hooks_killed_at_end", "hooks_failed") if k in s})
    return row


def verdict(row: dict, bound: float) -> list[str]:
    problems = []
    if "error" in row:
        return [row["error"]]
    if row["reported_kept"] != row["events_reported"]:
        problems.append(f"{row['events_reported'] - row['reported_kept']} reported events missing from --events")
    if not row["whole_lines"]:
        problems.append("a torn line in --events")
    if row["signal"] == "SIGTERM":
        if row["stop_s"] > bound:
            problems.append(f"SIGTERM shutdown took {row['stop_s']:.2f} s (bound {bound} s)")
        if row["exit"] != 0 or not row["video_in_place"]:
            problems.append(f"SIGTERM: exit {row['exit']}, video in place {row['video_in_place']}")
        if row["hook_processes_left"]:
            problems.append(f"SIGTERM: {row['hook_processes_left']} hook processes outlived the run")
    return problems


def table(rows: list[dict]) -> str:
    head = ("| hooks | signal | stop s | exit | reported | kept | in file | video | hook procs left | "
            "started / skipped / timed out / killed at end |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['behaviour']} | {r['signal']} | error: {r['error']} |||||||||")
            continue
        hooks = "/".join(str(r.get(k, "-")) for k in ("hooks_started", "hooks_skipped", "hooks_timed_out",
                                                       "hooks_killed_at_end"))
        lines.append(f"| {r['behaviour']} | {r['signal']} | {r['stop_s']:.2f} | {r['exit']} | {r['events_reported']} | "
                     f"{r['reported_kept']} | {r['events_in_file']} | {'yes' if r['video_in_place'] else 'no'} | "
                     f"{r['hook_processes_left']} | {hooks} |")
    return "\n".join(lines)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default=str(DEFAULT_MODELS / "hand_detector_cut.onnx"))
    p.add_argument("--classifier", default=str(DEFAULT_MODELS / "gesture_classifier.onnx"),
                   help="crop classifier behind --engine ('' for a one-stage --engine)")
    p.add_argument("--behaviours", default="none,slow,hanging", help=f"of {', '.join(BEHAVIOURS)}")
    p.add_argument("--signals", default="SIGTERM,SIGKILL", help=f"of {', '.join(SIGNALS)}")
    p.add_argument("--hold", type=int, default=6, help="frames each photo is shown (default 6)")
    p.add_argument("--repeat", type=int, default=3, help="times the photos are looped (default 3)")
    p.add_argument("--after", type=int, default=4,
                   help="events the hooks see before the signal (default 4: hanging hooks fill all 4 slots)")
    p.add_argument("--threads", type=int, default=2, help="runtime threads of the run (default 2)")
    p.add_argument("--bound", type=float, default=3.0, help="seconds a SIGTERM shutdown may take (default 3)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for --after events (default 120)")
    p.add_argument("--report", help="write the rows as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    behaviours = [b for b in args.behaviours.split(",") if b]
    signals = [s for s in args.signals.split(",") if s]
    unknown = [b for b in behaviours if b not in BEHAVIOURS] + [s for s in signals if s not in SIGNALS]
    if unknown:
        print(f"bench_shutdown: unknown {unknown}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp:
        work = Path(tmp)
        video = work / "video.mp4"
        frames = make_video(video, args.hold, args.repeat)
        print(f"video: {frames} frames; engine {args.engine}" + (f" + {args.classifier}" if args.classifier else ""),
              file=sys.stderr)
        for behaviour in behaviours:
            for sig in signals:
                row = one_case(args, video, behaviour, sig, work)
                rows.append(row)
                print(f"  {behaviour:8s} {sig:8s} " + (row.get("error") or
                      f"stopped in {row['stop_s']:.2f} s, exit {row['exit']}, {row['reported_kept']} of "
                      f"{row['events_reported']} reported events kept"), file=sys.stderr)
    problems = {f"{r['behaviour']}/{r['signal']}": verdict(r, args.bound) for r in rows}
    print(table(rows))
    if args.report:
        write_text_atomic(args.report, json.dumps({"bound_s": args.bound, "rows": rows, "problems": problems},
                                                  indent=1) + "\n")
    failed = {k: v for k, v in problems.items() if v}
    for case, why in failed.items():
        print(f"bench_shutdown: FAIL {case}: {'; '.join(why)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
