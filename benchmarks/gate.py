"""Regression gate: a report against ``benchmarks/baseline.json``.

Judged on the report's one measured machine (accuracy and INT8 drop): every row of the baseline ran and
kept its accuracy within a margin, no row failed, and every INT8 row was compared with the FP32 row it
was made from and lost no more than its limit; an INT8 row that lost its FP32 reference (its source was
not benchmarked, or not found) fails: a drop that was never measured is not a drop within the limit.

Judged on the report's emulated Pi CPUs (``bench --emulate pi5``, instructions counted per frame):
every INT8 row executes at most ``int8_max_insn_ratio`` of its FP32 reference's inference instructions
on the same emulated CPU. That is where the INT8 speed claim is true (a Pi 5's dot-product INT8
kernels); on x86, ONNX Runtime's and LiteRT's INT8 kernels of these small networks are no faster than
FP32 (the crop classifier's QDQ model is about 3x slower), so x86 latency is not gated at all: a ratio
of two x86 times said nothing about a board, and absolute times on shared CI machines are noise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hagrid_edge.benchmarks.suite import TASK_METRICS, int8_rows
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import read_json

BASELINE_SCHEMA = "hagrid-edge.bench-baseline"
BASELINE_VERSION = 1
# accuracy_margin: points (percent) an accuracy may fall below its accepted figure.
# int8_max_drop: points an INT8 artifact may lose against its FP32 source on the run's photos, in
#   mAP50-95 and mAP50 (detectors, pairs) or F1 (a crop classifier on its own). calibrate's guard holds
#   an INT8 artifact within 0.5 points on photos it did not tune on (docs/quantization.md); the
#   limits give another machine's runtime build room on top of that, and no more.
# int8_max_insn_ratio: the most inference instructions per frame an INT8 artifact may execute, as a
#   share of its FP32 reference's, on an emulated Pi CPU (the one-stage detector: 0.57x on a Pi 5).
DEFAULT_LIMITS: dict[str, Any] = {
    "accuracy_margin": 1.0,
    "int8_max_drop": {"mAP50_95": 1.0, "mAP50": 1.0, "f1": 1.0},
    "int8_max_insn_ratio": 0.8,
}
INSN_PART = "infer"  # the part of a frame INT8 changes (pre- and post-processing are the same code)


def _emulated(report: dict[str, Any], label: str) -> bool:
    return bool((report["machines"].get(label) or {}).get("emulated"))


def host_label(report: dict[str, Any]) -> str:
    """The one measured (not emulated) machine whose accuracy the gate and a baseline judge."""
    measured = [m for m in report["machines"] if not _emulated(report, m)]
    if len(measured) != 1:
        raise HagridEdgeError(f"the gate judges one machine's report (plus its emulated Pi CPUs), not "
                              f"{len(measured)} measured machines: {', '.join(measured) or 'none'}")
    return measured[0]


def _data_of(report: dict[str, Any]) -> dict[str, Any]:
    run = report["runs"][host_label(report)]
    return {k: run.get(k) for k in ("data_name", "split", "images")}


def _rows_on(report: dict[str, Any], label: str) -> list[dict[str, Any]]:
    return [r for r in report["rows"] if r.get("machine", label) == label]


def make_baseline(report: dict[str, Any], limits: dict[str, Any] | None = None,
                  command: str | None = None) -> dict[str, Any]:
    """The accepted figures of ``report``'s measured machine: every row's accuracy, and that it ran at all."""
    host = host_label(report)
    failed = [r["id"] for r in _rows_on(report, host) if r.get("error")]
    if failed:
        raise HagridEdgeError(f"cannot make a baseline from a run with failed rows: {', '.join(failed)}")
    rows = {r["id"]: {task: {m: acc[m] for m in TASK_METRICS[task]} for task, acc in r["accuracy"].items()}
            for r in _rows_on(report, host)}
    machine = report["machines"][host]
    return {"schema": BASELINE_SCHEMA, "schema_version": BASELINE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "measured_on": {"machine": machine.get("cpu"), "command": command, **_data_of(report)},
            "limits": limits or DEFAULT_LIMITS, "rows": rows}


def load_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = read_json(path, f"--baseline {path}")
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise HagridEdgeError(f"--baseline {path}: not a bench baseline (no \"schema\": \"{BASELINE_SCHEMA}\")")
    if data.get("schema_version", 0) > BASELINE_VERSION or not isinstance(data.get("rows"), dict):
        raise HagridEdgeError(f"--baseline {path}: unsupported baseline version or no \"rows\" object")
    limits = data.get("limits") or {}
    unknown = sorted(set(limits) - set(DEFAULT_LIMITS))
    if unknown:  # a limit the gate does not apply would read as a check that passed
        raise HagridEdgeError(f"--baseline {path}: limits {', '.join(unknown)} are not applied by this gate (it "
                              f"knows {', '.join(DEFAULT_LIMITS)}; x86 latency ratios are not gated): remove them")
    data["limits"] = {**DEFAULT_LIMITS, **limits}
    return data


def _accuracy_checks(rows: dict[str, dict[str, Any]], baseline: dict[str, Any], margin: float,
                     failures: list[str]) -> int:
    checks = 0
    for rid, accepted in baseline["rows"].items():
        checks += 1
        row = rows.get(rid)
        if row is None:
            failures.append(f"{rid}: in the baseline but not benchmarked in this run")
            continue
        if row.get("error"):
            continue  # reported once, with every failed row
        for task, metrics in accepted.items():
            for metric, value in metrics.items():
                checks += 1
                now = ((row.get("accuracy") or {}).get(task) or {}).get(metric)
                if now is None:
                    failures.append(f"{rid}: {task} {metric} missing (baseline {value:.2f})")
                elif now < value - margin:
                    failures.append(f"{rid}: {task} {metric} {now:.2f} is {value - now:.2f} below the baseline "
                                    f"{value:.2f} (margin {margin:g})")
    return checks


def _no_reference(row: dict[str, Any], where: str, unmeasured: str) -> str:
    why = row.get("reference_missing") or "no FP32 source recorded in its spec (give --reference INT8=FP32)"
    return (f"{where}: INT8 row without its FP32 reference ({why}): its {unmeasured} was not measured; bench "
            "the FP32 artifact it was made from in the same run")


def _drop_checks(rows: list[dict[str, Any]], max_drop: dict[str, Any], failures: list[str]) -> int:
    checks = 0
    for row in int8_rows(rows):
        if row.get("kind") == "latency-only":
            continue  # no accuracy, so no drop to judge
        checks += 1
        if not row.get("reference"):
            failures.append(_no_reference(row, row["id"], "drop"))
            continue
        judged = [(task, metric, drop) for task, drops in (row.get("drop") or {}).items()
                  for metric, drop in drops.items() if metric in max_drop]
        if not judged:
            failures.append(f"{row['id']}: INT8 row shares no accuracy metric with its reference {row['reference']}")
        for task, metric, drop in judged:
            checks += 1
            if drop > float(max_drop[metric]):
                failures.append(f"{row['id']}: INT8 {task} {metric} drop {drop:.2f} vs {row['reference']} "
                                f"exceeds its limit {float(max_drop[metric]):g}")
    return checks


def _instruction_checks(label: str, rows: list[dict[str, Any]], max_ratio: float, failures: list[str]) -> int:
    checks = 0
    for row in int8_rows(rows):
        checks += 1
        where = f"{row['id']} on {label}"
        if not row.get("reference"):
            failures.append(_no_reference(row, where, "instruction ratio"))
            continue
        ratio = (row.get("instructions_ratio") or {}).get(INSN_PART)
        if ratio is None:
            failures.append(f"{where}: no {INSN_PART} instruction ratio against {row['reference']} (one of the two "
                            "was not counted on this emulated CPU)")
        elif ratio > max_ratio:
            failures.append(f"{where}: INT8 {INSN_PART} instructions {ratio:.3f}x those of {row['reference']} exceed "
                            f"the limit {max_ratio:g}x (emulated, same run)")
    return checks


def check(report: dict[str, Any], baseline: dict[str, Any]) -> tuple[int, list[str]]:
    """(number of checks made, failure messages naming artifact and metric)."""
    limits = baseline["limits"]
    failures: list[str] = []
    checks = 1
    host = host_label(report)
    data = _data_of(report)
    want = {k: baseline.get("measured_on", {}).get(k) for k in ("data_name", "split", "images")}
    if data != want:
        failures.append(f"run data {data} differs from the baseline's {want}: mAP on other images is not "
                        "comparable; rerun with the baseline's data, split and no --limit, or remake the baseline")
        return checks, failures
    host_rows = _rows_on(report, host)
    for row in host_rows:
        checks += 1
        if row.get("error"):
            failures.append(f"{row['id']}: failed to run ({row['error']})")
    checks += _accuracy_checks({r["id"]: r for r in host_rows}, baseline, float(limits["accuracy_margin"]), failures)
    checks += _drop_checks(host_rows, limits["int8_max_drop"], failures)
    for label in report["machines"]:
        if _emulated(report, label):
            emulated = _rows_on(report, label)
            for row in emulated:
                checks += 1
                if row.get("error"):
                    failures.append(f"{row['id']} on {label}: failed to run ({row['error']})")
            checks += _instruction_checks(label, emulated, float(limits["int8_max_insn_ratio"]), failures)
    return checks, failures
