"""The calibration report: markdown for people and JSON for tools, written beside the artifacts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hagrid_edge.paths import write_text_atomic
from hagrid_edge.quantize.accuracy import Score

REPORT_NAME = "calibration_report"


@dataclass
class TargetResult:
    target: str
    path: Path
    score: Score | None = None
    within: bool | None = None  # None: not guarded
    float_layers: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)  # compute layers without INT8 weights, read off the artifact
    trials: list[dict] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    size: int = 0
    seconds: float = 0.0
    error: str | None = None
    notes: str = ""

    def as_dict(self, reference: Score | None) -> dict:
        d = {"target": self.target, "path": str(self.path), "size_bytes": self.size, "seconds": self.seconds,
             "ok": self.error is None}
        if self.error:
            d["error"] = self.error
        if self.score is not None:
            d["score"] = self.score.as_dict()
            if reference is not None:
                d["drop"] = round(reference.value - self.score.value, 2)
        if self.within is not None:
            d["within_max_drop"] = self.within
        if self.target == "onnx-int8":
            d.update(float_layers=self.float_layers, float_nodes=self.float_nodes, trials=self.trials,
                     most_sensitive=[{"layer": n, "relative_error": round(e, 6)} for n, e in self.sensitivity])
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass
class Report:
    model: str
    out: Path
    method: str
    max_drop: float
    calibration: dict
    skipped_files: list[str]
    graph: dict
    reference: Score | None
    fp32_path: Path
    calib_seconds: float
    targets: list[TargetResult] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "max_drop": self.max_drop,
                "calibration": {**self.calibration, "skipped_files": self.skipped_files,
                                "seconds": self.calib_seconds},
                "graph": self.graph, "fp32": {"path": str(self.fp32_path), "size_bytes": self.fp32_path.stat().st_size,
                                              "score": self.reference.as_dict() if self.reference else None},
                "targets": [t.as_dict(self.reference) for t in self.targets], "seconds": self.seconds}

    def markdown(self) -> str:
        c, ref = self.calibration, self.reference
        metric = ref.metric if ref else "mAP50_95"
        second = next(iter(ref.secondary)) if ref else "mAP50"
        lines = [f"# INT8 calibration of `{Path(self.model).name}`", "",
                 f"- method: **{self.method}**, symmetric int8 activations, per-channel symmetric int8 weights",
                 f"- calibration images: {c['images']} from `{c['data']}` ({c['split']}), "
                 f"{c['skipped']} skipped, {c['inputs']} inputs, {c['tensors']} tensors, "
                 f"{self.calib_seconds:.1f} s",
                 f"- graph: opset {self.graph.get('source_opset')} -> {self.graph.get('opset')}"
                 + (", decode + NMS moved out of the graph (host post-processing)" if self.graph.get("graph_cut")
                    else ""),
                 f"- accuracy guard: {ref.task} on {ref.images} images of the val split, max drop "
                 f"{self.max_drop} {metric} points" if ref else "- accuracy guard: off",
                 "", f"| artifact | {metric} | {second} | drop | size (KB) | seconds | float layers | status |",
                 "|---|---|---|---|---|---|---|---|"]
        if ref:
            lines.append(f"| `{self.fp32_path.name}` (FP32 reference) | {ref.value:.2f} | "
                         f"{ref.secondary[second]:.2f} | - | {self.fp32_path.stat().st_size / 1024:.0f} | "
                         f"{ref.seconds:.1f} | - | ok |")
        for t in self.targets:
            s = t.score
            val = f"{s.value:.2f}" if s else "-"
            sec = f"{s.secondary[second]:.2f}" if s and second in s.secondary else "-"
            drop = f"{ref.value - s.value:.2f}" if s and ref else "-"
            status = ("failed: " + t.error.replace("|", "/")) if t.error else (
                "ok" if t.within in (None, True) else "**over max drop**")
            floats = str(len(t.float_layers)) if t.target == "onnx-int8" else "-"
            lines.append(f"| `{t.path.name}` ({t.target}) | {val} | {sec} | {drop} | {t.size / 1024:.0f} | "
                         f"{t.seconds:.1f} | {floats} | {status} |")
        for t in self.targets:
            if t.target == "onnx-int8" and t.trials:
                lines += ["", "## Mixed precision (onnx-int8)", "",
                          "Layers kept in float: " + (", ".join(f"`{n}`" for n in t.float_layers) or "none"),
                          "", "Trials (layers kept in float -> metric): "
                          + ", ".join(f"{x['float_layers']} -> {x['value']:.2f}" for x in t.trials)]
                if t.within is False:
                    lines += ["", f"**The drop could not be brought within {self.max_drop} points**; the best "
                                  "candidate was kept."]
            if t.notes:
                lines += ["", f"{t.target}: {t.notes}"]
        if ref is not None and ref.value <= 0:
            lines += ["", f"**The FP32 model scores 0 {metric} on these images: the guard cannot judge the INT8 "
                          "artifacts (an untrained model, or a task mismatch).**"]
        if self.skipped_files:
            lines += ["", "Skipped (unreadable) calibration images: " + ", ".join(self.skipped_files[:20])]
        return "\n".join(lines) + "\n"

    def write(self) -> tuple[Path, Path]:
        md, js = self.out / f"{REPORT_NAME}.md", self.out / f"{REPORT_NAME}.json"
        write_text_atomic(js, json.dumps(self.as_dict(), indent=1))
        write_text_atomic(md, self.markdown())
        return md, js
