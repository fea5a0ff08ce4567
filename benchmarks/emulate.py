"""``bench --emulate pi4,pi5``: guest instructions per frame, per stage, on emulated Raspberry Pi CPUs.

Each emulated CPU becomes a machine of its own in the report (``pi5-emulated``), with one row per
benchmarked TFLite artifact (the Pi's runtime) giving the instructions executed for pre-processing, inference and
post-processing (median over real frames, after warm-up frames). Counting happens in
``emulate_counts`` inside the emulated userland; this side turns the plugin's marker lines into
figures. An instruction count is a proxy for the Pi's work, not a latency: it ignores caches,
memory bandwidth, clocks and how many instructions the core retires per cycle.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from hagrid_edge.benchmarks.emulate_counts import (
    EMPTY,
    FRAME_END,
    FRAME_START,
    INFER_END,
    INFER_START,
    STAGE_END,
    untag,
)
from hagrid_edge.errors import HagridEdgeError

STAGES = ("pre", "infer", "post")
PI_SUFFIXES = (".tflite",)  # what the Pi userland runs (LiteRT); ONNX Runtime and TensorRT are not installed there
PROXY_NOTE = ("Guest instructions executed under qemu-aarch64 with the Pi's CPU pinned: a hardware-independent "
              "proxy for the work per frame, not a latency (caches, memory bandwidth, clock and instructions "
              "per cycle are not modelled).")


def read_marks(path: Path) -> list[tuple[int, int]]:
    """The plugin's lines ``<tag> <count>`` (its closing ``end <count>`` line is skipped)."""
    from hagrid_edge.deploy.rpi.emulate import read_lines

    marks = []
    for number, line in enumerate(read_lines(path, "the emulator's instruction counts"), 1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit() or not (fields[0].isdigit() or fields[0] == "end"):
            raise HagridEdgeError(f"{path}:{number}: not a marker line: {line!r}")
        if fields[0] != "end":
            marks.append((int(fields[0]), int(fields[1])))
    return marks


def marker_cost(marks: list[tuple[int, int]], target: int) -> int:
    """Instructions of one marker call: the median gap between the target's back-to-back empty markers."""
    empties = [count for value, count in marks if untag(value)[0] == target and untag(value)[2] == EMPTY]
    gaps = [b - a for a, b in zip(empties[0::2], empties[1::2])]  # noqa: B905
    return int(statistics.median(gaps)) if gaps else 0


def frame_stages(marks: list[tuple[int, int]], target: int) -> dict[int, dict[str, int]]:
    """Per frame of ``target``: instructions in pre, infer and post (marker cost subtracted per segment).

    Segments: frame start -> first infer start is pre; infer start -> end is infer; infer end ->
    the stage's end (two-stage) or the frame's end is post; a stage end -> the next infer is pre.
    """
    cost = marker_cost(marks, target)
    frames: dict[int, dict[str, int]] = {}
    stage, last = None, 0
    for value, count in marks:
        t, frame, kind = untag(value)
        if t != target or kind == EMPTY:
            continue
        if kind == FRAME_START:
            frames[frame] = {s: 0 for s in STAGES}
            stage, last = "pre", count
            continue
        if stage is None or frame not in frames:
            raise HagridEdgeError(f"instruction markers out of order for target {target}, frame {frame}")
        frames[frame][stage] += max(count - last - cost, 0)
        last = count
        stage = {INFER_START: "infer", INFER_END: "post", STAGE_END: "pre", FRAME_END: None}[kind]
    return frames


def summarize(frames: dict[int, dict[str, int]], warmup: int) -> dict[str, Any]:
    """Median instructions per stage (and of the per-frame totals) over the frames after warm-up."""
    counted = [frames[i] for i in sorted(frames) if i >= warmup]
    if not counted:
        raise HagridEdgeError("no frames were counted after the warm-up frames")
    out: dict[str, Any] = {s: int(statistics.median(f[s] for f in counted)) for s in STAGES}
    out["total"] = int(statistics.median(sum(f.values()) for f in counted))
    out["pre_post_share"] = round((out["pre"] + out["post"]) / out["total"], 3) if out["total"] else None
    out["frames"] = len(counted)
    return out


def _request(targets: list[Any], config: Any, frames: int, warmup: int, label: str) -> dict[str, Any]:
    return {"targets": [{"model": str(Path(t.model).resolve()),
                         "classifier": str(Path(t.classifier).resolve()) if t.classifier else None}
                        for t in targets],
            "data": str(Path(config.data).resolve()), "split": config.split, "frames": frames, "warmup": warmup,
            "threads": 1, "label": label}


def count_on(cpu: Any, targets: list[Any], config: Any, frames: int, warmup: int,
             host: str | None = None) -> tuple[dict, dict, list]:
    """(machine facts, run facts, rows) of one emulated CPU; a crash or failure is an error for the whole CPU."""
    from hagrid_edge.benchmarks.suite import _row
    from hagrid_edge.deploy.rpi import emulate as pi

    label = f"{host}-{cpu.name}-emulated" if host else f"{cpu.name}-emulated"
    counted = [t for t in targets if not t.latency_only and all(p.endswith(PI_SUFFIXES) for p in t.paths)]
    if not counted:
        raise HagridEdgeError(f"--emulate counts the Pi's runtime (LiteRT): give at least one "
                              f"{'/'.join(PI_SUFFIXES)} artifact")
    with tempfile.TemporaryDirectory(prefix="hagrid-edge-emulate.") as tmp:
        request, result, marks_file = Path(tmp, "request.json"), Path(tmp, "result.json"), Path(tmp, "marks.txt")
        request.write_text(json.dumps(_request(counted, config, frames, warmup, label)), encoding="utf-8")
        code = pi.run(cpu, ["python", "-m", "hagrid_edge.benchmarks.emulate_counts", str(request), str(result)],
                      count_to=marks_file)
        if code != 0 or not result.is_file():
            raise HagridEdgeError(f"instruction counting on the emulated {cpu.name} failed (exit {code})")
        guest = json.loads(result.read_text(encoding="utf-8"))
        marks = read_marks(marks_file)
    rows = []
    for index, (target, facts) in enumerate(zip(counted, guest["targets"])):  # noqa: B905
        if facts.get("error"):
            rows.append(_row(target, ("error", facts["error"])))
            continue
        instructions = {**summarize(frame_stages(marks, index), warmup), "cpu": cpu.qemu_cpu, "threads": 1}
        rows.append(_row(target, ("ok", {"kind": facts["kind"], "artifacts": facts["artifacts"], "images": frames,
                                          "accuracy": {}, "latency": {}, "memory": {},
                                          "instructions": instructions})))
    machine = {**guest["machine"], "label": label, "cpu": f"{cpu.qemu_cpu} (emulated: qemu-aarch64 user mode)",
               "board": f"{cpu.board} userland (Debian 12 arm64, emulated)", "emulated": cpu.qemu_cpu,
               "cores": cpu.cores, "usable_cores": 1}
    run = {"data": config.data, "data_name": Path(config.data).resolve().name, "split": config.split,
           "images": guest["frames"], "instructions": {"frames": guest["frames"], "warmup": warmup, "threads": 1},
           "command": "hagrid-edge " + shlex.join(sys.argv[1:])}
    return machine, run, rows


def attach_instruction_ratios(rows: list[dict[str, Any]],
                              references: dict[tuple[str, ...], list[tuple[str, ...]]]) -> None:
    """INT8 rows get their instruction ratio against the FP32 row they were made from, on the same CPU."""
    from hagrid_edge.benchmarks.suite import attach_references

    attach_references(rows, references)
    by_id = {r["id"]: r for r in rows}
    for row in rows:
        ref = by_id.get(row.get("reference") or "")
        if ref is None or not row.get("instructions") or not ref.get("instructions"):
            continue
        row["instructions_ratio"] = {part: round(row["instructions"][part] / ref["instructions"][part], 3)
                                     for part in ("infer", "total") if ref["instructions"][part]}


def emulated_reports(cpus: list[Any], targets: list[Any], config: Any,
                     references: dict[tuple[str, ...], list[tuple[str, ...]]],
                     frames: int = 8, warmup: int = 1, host: str | None = None,
                     progress: Any = None) -> list[tuple[dict, dict, list]]:
    """One (machine, run, rows) per emulated CPU, labelled ``pi5-emulated`` (``HOST-pi5-emulated`` with --machine)."""
    out = []
    for cpu in cpus:
        if progress:
            progress(f"bench: counting instructions on the emulated {cpu.name} ({cpu.qemu_cpu}) ...")
        machine, run, rows = count_on(cpu, targets, config, frames, warmup, host)
        attach_instruction_ratios(rows, references)
        out.append((machine, run, rows))
    return out
