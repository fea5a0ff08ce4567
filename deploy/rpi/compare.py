"""The Pi CI lane's check: Arm (emulated Pi) figures against x86 figures made in the same CI run.

LiteRT's INT8 outputs are bit-identical on both for the same input tensor, and pre-processing makes
the same tensors on both (``processing.bilinear``, with the one OpenCV of the lock), so the figures
are expected to agree exactly. Gated: mAP50-95 and mAP50 within ``MAP_TOLERANCE`` points, the same
gesture events (start/end, gesture, track, frame) with scores within ``SCORE_TOLERANCE`` and boxes
within ``BOX_TOLERANCE_PX``, and floors on both sides (``--min-map50-95``, ``--min-events``), so a
lane where both sides found nothing fails too.

``python -m hagrid_edge.deploy.rpi.compare X86_EVAL.json ARM_EVAL.json X86_EVENTS.jsonl ARM_EVENTS.jsonl
[--min-map50-95 P] [--min-events N]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hagrid_edge.deploy.rpi.emulate import read_lines
from hagrid_edge.errors import HagridEdgeError

# Both sides compute the same numbers; the tolerances leave room only for printing and summation order.
MAP_TOLERANCE = 0.05  # points of COCO mAP (percent)
SCORE_TOLERANCE = 1e-3
BOX_TOLERANCE_PX = 0.5
METRICS = ("mAP50_95", "mAP50")
EVENT_KEYS = ("event", "gesture", "track", "frame")


def load_eval(path: Path) -> dict[str, Any]:
    """``hagrid-edge eval --json`` output: the last line of the file that is a JSON object with mAP."""
    for line in reversed(read_lines(path, "eval output")):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and all(m in data for m in METRICS):
            return data
    raise HagridEdgeError(f"{path}: no eval --json result (an object with {', '.join(METRICS)})")


def load_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for number, line in enumerate(read_lines(path, "events"), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise HagridEdgeError(f"{path}:{number}: not a JSON event line") from None
        if not isinstance(event, dict) or any(k not in event for k in EVENT_KEYS):
            raise HagridEdgeError(f"{path}:{number}: an event needs {', '.join(EVENT_KEYS)}")
        events.append(event)
    return events


def compare_eval(x86: dict[str, Any], arm: dict[str, Any], tolerance: float = MAP_TOLERANCE,
                 floor: float = 0.0) -> list[str]:
    """Failures (empty when every metric agrees within ``tolerance`` points on the same images, and
    mAP50-95 reaches ``floor`` on both sides)."""
    failures = []
    if x86.get("images") != arm.get("images"):
        failures.append(f"scored {arm.get('images')} images on Arm, {x86.get('images')} on x86")
    for m in METRICS:
        delta = float(arm[m]) - float(x86[m])
        if abs(delta) > tolerance:
            failures.append(f"{m}: Arm {arm[m]:.2f} vs x86 {x86[m]:.2f} ({delta:+.2f}, limit +-{tolerance})")
    for side, figures in (("x86", x86), ("Arm", arm)):
        if float(figures["mAP50_95"]) < floor:
            failures.append(f"mAP50_95 on {side} {float(figures['mAP50_95']):.2f} is below the floor {floor:g}")
    return failures


def _at(keys: list[tuple], index: int) -> Any:
    return keys[index] if index < len(keys) else "(none)"


def compare_events(x86: list[dict[str, Any]], arm: list[dict[str, Any]],
                   min_events: int = 1) -> tuple[list[str], dict[str, float]]:
    """(failures, largest score and box differences) of two event streams that must be the same events,
    at least ``min_events`` of them, with scores and boxes within the tolerances."""
    failures = [f"{len(events)} events on {side}, fewer than the floor {min_events}"
                for side, events in (("x86", x86), ("Arm", arm)) if len(events) < min_events]
    keys_x86 = [tuple(e[k] for k in EVENT_KEYS) for e in x86]
    keys_arm = [tuple(e[k] for k in EVENT_KEYS) for e in arm]
    if keys_x86 != keys_arm:
        first = next((i for i, (a, b) in enumerate(zip(keys_x86, keys_arm)) if a != b),  # noqa: B905
                     min(len(keys_x86), len(keys_arm)))
        failures.append(f"events differ: {len(keys_arm)} on Arm, {len(keys_x86)} on x86; first difference at "
                        f"event {first}: Arm {_at(keys_arm, first)} vs x86 {_at(keys_x86, first)}")
    diffs = {"score": 0.0, "box_px": 0.0}
    for a, b in zip(x86, arm):  # noqa: B905
        if "score" in a and "score" in b:
            diffs["score"] = max(diffs["score"], abs(float(a["score"]) - float(b["score"])))
        if a.get("box") and b.get("box"):
            diffs["box_px"] = max(diffs["box_px"], *(abs(float(p) - float(q)) for p, q in zip(a["box"], b["box"])))  # noqa: B905
    if diffs["score"] > SCORE_TOLERANCE:
        failures.append(f"event scores differ by up to {diffs['score']:.4f} (limit {SCORE_TOLERANCE:g})")
    if diffs["box_px"] > BOX_TOLERANCE_PX:
        failures.append(f"event boxes differ by up to {diffs['box_px']:.2f} px (limit {BOX_TOLERANCE_PX:g})")
    return failures, {k: round(v, 4) for k, v in diffs.items()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m hagrid_edge.deploy.rpi.compare",
                                description="The Pi lane's check: emulated-Pi figures against x86 figures.")
    for name in ("x86_eval", "arm_eval", "x86_events", "arm_events"):
        p.add_argument(name, type=Path)
    p.add_argument("--min-map50-95", type=float, default=0.0, metavar="P",
                   help="floor of eval's mAP50-95 on both sides, in points (default 0)")
    p.add_argument("--min-events", type=int, default=1, metavar="N", help="floor of events on both sides (default 1)")
    args = p.parse_args(argv)
    try:
        x86_eval, arm_eval = load_eval(args.x86_eval), load_eval(args.arm_eval)
        x86_events, arm_events = load_events(args.x86_events), load_events(args.arm_events)
    except HagridEdgeError as e:
        print(f"pi lane: {e}", file=sys.stderr)
        return 1
    failures = compare_eval(x86_eval, arm_eval, floor=args.min_map50_95)
    event_failures, diffs = compare_events(x86_events, arm_events, args.min_events)
    failures += event_failures
    print(f"pi lane: {arm_eval.get('images')} images: mAP50-95 Arm {arm_eval['mAP50_95']:.2f} / x86 "
          f"{x86_eval['mAP50_95']:.2f}, mAP50 Arm {arm_eval['mAP50']:.2f} / x86 {x86_eval['mAP50']:.2f}; "
          f"{len(arm_events)} events on Arm, {len(x86_events)} on x86 (largest score difference "
          f"{diffs['score']}, box {diffs['box_px']} px)")
    for f in failures:
        print(f"pi lane: FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
