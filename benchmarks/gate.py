"""Regression gate: a report against ``benchmarks/baseline.json``.

Fails when an artifact's accuracy falls more than a margin below its accepted figure, when an INT8
artifact loses more than its limit against the FP32 artifact it was made from, or when an INT8
artifact is slower than its FP32 source by more than a set ratio. Latency is judged only as a
ratio of two figures measured in the same run: absolute times on shared machines are noise.
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
# Points (percent) an accuracy may fall below baseline; points an INT8 artifact may lose against its
# FP32 source, in mAP50-95 and mAP50 (detectors, pairs) or F1 (classifiers), on the run's photos; how
# many times slower than its FP32 source an INT8 artifact may be (end-to-end, the fastest timed run of
# each, both from the same run). The INT8 mAP limits are the INT8 pipeline's promise (calibrate's guard
# holds the INT8 pair within 0.5 / 1.0 of the FP32 pair on photos it did not tune on) with room for
# another machine's runtime build; F1 is a crop classifier's on its own. On x86, ONNX Runtime's QDQ models of these small networks are not
# faster than FP32 (the crop classifier's is about 3x slower): the ratio catches gross regressions
# only, and the speed of INT8 on a board is measured on the board (or its emulated instruction count).
DEFAULT_LIMITS: dict[str, Any] = {
    "accuracy_margin": 1.0,
    "int8_max_drop": {"mAP50_95": 1.0, "mAP50": 1.0, "f1": 2.0},
    "int8_max_latency_ratio": 4.0,
}


def _data_of(report: dict[str, Any]) -> dict[str, Any]:
    if len(report["machines"]) != 1:
        raise HagridEdgeError("the gate judges one machine's report, not a merged one")
    run = next(iter(report["runs"].values()))
    return {k: run.get(k) for k in ("data_name", "split", "images")}


def make_baseline(report: dict[str, Any], limits: dict[str, Any] | None = None,
                  command: str | None = None) -> dict[str, Any]:
    """The accepted figures of ``report``: every row's accuracy, and that it ran at all."""
    failed = [r["id"] for r in report["rows"] if r.get("error")]
    if failed:
        raise HagridEdgeError(f"cannot make a baseline from a run with failed rows: {', '.join(failed)}")
    rows = {r["id"]: {task: {m: acc[m] for m in TASK_METRICS[task]} for task, acc in r["accuracy"].items()}
            for r in report["rows"]}
    machine = next(iter(report["machines"].values()))
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
    data["limits"] = {**DEFAULT_LIMITS, **(data.get("limits") or {})}
    return data


def check(report: dict[str, Any], baseline: dict[str, Any]) -> tuple[int, list[str]]:
    """(number of checks made, failure messages naming artifact and metric)."""
    limits = baseline["limits"]
    failures: list[str] = []
    checks = 1
    data, want = _data_of(report), {k: baseline.get("measured_on", {}).get(k) for k in ("data_name", "split", "images")}
    if data != want:
        failures.append(f"run data {data} differs from the baseline's {want}: mAP on other images is not "
                        "comparable; rerun with the baseline's data, split and no --limit, or remake the baseline")
        return checks, failures
    rows = {r["id"]: r for r in report["rows"]}
    margin = float(limits["accuracy_margin"])
    for rid, accepted in baseline["rows"].items():
        checks += 1
        row = rows.get(rid)
        if row is None:
            failures.append(f"{rid}: in the baseline but not benchmarked in this run")
            continue
        if row.get("error"):
            failures.append(f"{rid}: failed to run ({row['error']})")
            continue
        for task, metrics in accepted.items():
            for metric, value in metrics.items():
                checks += 1
                now = ((row.get("accuracy") or {}).get(task) or {}).get(metric)
                if now is None:
                    failures.append(f"{rid}: {task} {metric} missing (baseline {value:.2f})")
                elif now < value - margin:
                    failures.append(f"{rid}: {task} {metric} {now:.2f} is {value - now:.2f} below the baseline "
                                    f"{value:.2f} (margin {margin:g})")
    max_drop, max_ratio = limits["int8_max_drop"], float(limits["int8_max_latency_ratio"])
    for row in int8_rows(report["rows"]):
        if not row.get("reference"):
            continue
        for task, drops in (row.get("drop") or {}).items():
            for metric, drop in drops.items():
                checks += 1
                if metric in max_drop and drop > float(max_drop[metric]):
                    failures.append(f"{row['id']}: INT8 {task} {metric} drop {drop:.2f} vs {row['reference']} "
                                    f"exceeds its limit {float(max_drop[metric]):g}")
        ratio = (row.get("latency_ratio") or {}).get("end_to_end_min")
        if ratio is not None:
            checks += 1
            if ratio > max_ratio:
                failures.append(f"{row['id']}: INT8 end-to-end latency (fastest run) {ratio:.2f}x that of "
                                f"{row['reference']} exceeds the limit {max_ratio:g}x (same run)")
    return checks, failures
