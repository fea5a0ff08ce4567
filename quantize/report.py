"""The calibration report: markdown for people and JSON for tools, written beside the artifacts.

Every figure names its photo set: ``tune`` (where the guard chose float layers) or ``report`` (photos
nothing was chosen on); mAP is against the annotations of the set's labelled photos, agreement is
against the FP32 model's own detections on all of its photos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hagrid_edge.paths import write_text_atomic
from hagrid_edge.quantize.accuracy import Score

REPORT_NAME = "calibration_report"


def _drop(reference: Score | None, score: Score | None) -> dict:
    if reference is None or score is None:
        return {}
    out = {score.metric: round(reference.value - score.value, 2)}
    for k, v in score.secondary.items():
        if k in reference.secondary:
            out[k] = round(reference.secondary[k] - v, 2)
    return out


@dataclass
class TargetResult:
    target: str
    path: Path
    baseline: Score | None = None  # what the guard compared with, where not the FP32 model (a stage in a pair)
    baseline_what: str = ""
    tune: Score | None = None  # the guard's final candidate on the tune photos
    report: Score | None = None  # the same artifact on the report photos
    within: bool | None = None  # None: not guarded
    float_layers: list[str] = field(default_factory=list)
    units: int = 0  # layers the guard could keep in float (0: not guarded)
    float_nodes: list[str] = field(default_factory=list)  # ONNX compute layers without INT8 weights, read off the file
    trials: list[dict] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    ranked_by: str = ""  # how the guard ordered the layers it kept in float
    unit_costs: dict[str, float] = field(default_factory=dict)  # float layer -> Pi 5 instructions it adds
    unit_gains: dict[str, float] = field(default_factory=dict)  # float layer -> tune points it gains alone
    board: dict[str, dict] = field(default_factory=dict)  # cpu -> modelled instructions and ratios (TFLite)
    size: int = 0
    seconds: float = 0.0
    error: str | None = None
    notes: str = ""

    def as_dict(self, reference: dict[str, Score]) -> dict:
        d: dict = {"target": self.target, "path": str(self.path), "size_bytes": self.size, "seconds": self.seconds,
                   "ok": self.error is None}
        if self.error:
            d["error"] = self.error
        for name in ("tune", "report"):
            score = getattr(self, name)
            if score is not None:
                d[name] = {**score.as_dict(), "drop": _drop(reference.get(name), score)}
        if self.baseline is not None:
            d["guarded_against"] = {**self.baseline.as_dict(), "what": self.baseline_what}
        if self.within is not None:
            d["within_limits_on_tune"] = self.within
        if self.target.endswith("int8") and self.target != "trt-cache":
            d.update(float_layers=self.float_layers, units=self.units, trials=self.trials, ranked_by=self.ranked_by,
                     float_layer_instructions={n: round(c) for n, c in self.unit_costs.items()},
                     float_layer_gains=self.unit_gains,
                     most_sensitive=[{"layer": n, "relative_error": round(e, 6)} for n, e in self.sensitivity])
        if self.board:
            d["board_instructions"] = self.board
        if self.float_nodes:
            d["float_nodes"] = self.float_nodes
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass
class StageReport:
    role: str  # "detector" or "classifier"
    source: str
    fp32_path: Path
    graph: dict
    calibration: dict
    reference: dict[str, Score] = field(default_factory=dict)  # photo set -> FP32 score (the pair's, for a classifier)
    targets: list[TargetResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"role": self.role, "source": self.source, "graph": self.graph, "calibration": self.calibration,
                "fp32": {"path": str(self.fp32_path), "size_bytes": self.fp32_path.stat().st_size,
                         **{k: v.as_dict() for k, v in self.reference.items()}},
                "targets": [t.as_dict(self.reference) for t in self.targets]}


@dataclass
class PairResult:
    """Both stages in INT8 of one format against the FP32 pair (gestures)."""

    target: str
    detector: Path | None
    classifier: Path | None
    scores: dict[str, tuple[Score, Score]] = field(default_factory=dict)  # photo set -> (FP32 pair, INT8 pair)
    within: bool | None = None  # on the report photos
    error: str | None = None

    def as_dict(self) -> dict:
        d: dict = {"target": self.target, "detector": str(self.detector), "classifier": str(self.classifier),
                   "ok": self.error is None}
        if self.error:
            d["error"] = self.error
        for name, (ref, got) in self.scores.items():
            d[name] = {"fp32": ref.as_dict(), "int8": got.as_dict(), "drop": _drop(ref, got)}
        if self.within is not None:
            d["within_limits_on_report"] = self.within
        return d


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cells(score: Score | None, reference: Score | None) -> list[str]:
    """mAP (or F1) with its drop, mAP50 (or accuracy) with its drop, agreement mAP50-95."""
    if score is None:
        return ["-", "-", "-"]
    (second, value2), = list(score.secondary.items())[:1] or [("", None)]
    drop = _drop(reference, score)
    main = f"{score.value:.2f}" + (f" ({-drop[score.metric]:+.2f})" if score.metric in drop else "")
    sec = _fmt(value2) + (f" ({-drop[second]:+.2f})" if second in drop else "")
    return [main, sec, _fmt(score.agreement.get("mAP50_95"))]


@dataclass
class Report:
    model: str
    classifier: str | None
    out: Path
    method: str
    max_drop: float
    min_agreement: float
    photo_sets: dict[str, dict]
    max_drop50: float | None = None  # mAP50 points (detectors and pairs)
    stages: list[StageReport] = field(default_factory=list)
    pairs: list[PairResult] = field(default_factory=list)
    seconds: float = 0.0
    detector_guard: str = "pair"  # with a classifier: what the detector was guarded on ("pair" or "hands")

    @property
    def targets(self) -> list[TargetResult]:
        return [t for s in self.stages for t in s.targets]

    def as_dict(self) -> dict:
        return {"model": self.model, "classifier": self.classifier, "method": self.method,
                "limits": {"max_drop": self.max_drop, "max_drop50": self.max_drop50,
                           "min_agreement": self.min_agreement, "judged_on": "tune",
                           "detector_guard": self.detector_guard if self.classifier else None},
                "photo_sets": self.photo_sets, "stages": [s.as_dict() for s in self.stages],
                "pairs": [p.as_dict() for p in self.pairs], "seconds": self.seconds}

    def _pair_reference(self, photos: str) -> Score | None:
        """The FP32 pair's score on ``photos`` (kept as the classifier stage's reference)."""
        return self.stages[1].reference.get(photos) if len(self.stages) > 1 else None

    def _stage_lines(self, stage: StageReport) -> list[str]:
        paired = stage.role == "classifier" and self.classifier is not None
        ref_tune, ref_report = stage.reference.get("tune"), stage.reference.get("report")
        task = (ref_tune or ref_report).task if (ref_tune or ref_report) else "-"
        head = (f"## {stage.role} `{Path(stage.source).name}`"
                + (" (guarded in the pipeline behind the detector's INT8 form of the same format: gestures)"
                   if paired else f" ({task})"))
        c = stage.calibration
        lines = [head, "",
                 f"- calibration: {c['images']} images from `{c['data']}` ({c['split']}), {c['skipped']} skipped, "
                 f"{c['inputs']} inputs, {c['tensors']} tensors, {c['seconds']:.1f} s",
                 f"- graph: opset {stage.graph.get('source_opset')} -> {stage.graph.get('opset')}"
                 + (", decode + NMS moved out of the graph (host post-processing)"
                    if stage.graph.get("graph_cut") else ""), "",
                 "| artifact | tune metric (drop) | tune 2nd (drop) | tune agreement | report metric (drop) | "
                 "report 2nd (drop) | report agreement | float layers | size (KB) | s | status |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        fp32_size = stage.fp32_path.stat().st_size / 1024
        lines.append(f"| `{stage.fp32_path.name}` (FP32{' pair' if paired else ''} reference) | "
                     + " | ".join(_cells(ref_tune, None) + _cells(ref_report, None))
                     + f" | - | {fp32_size:.0f} | - | ok |")
        for t in stage.targets:
            status = ("failed: " + t.error.replace("|", "/")) if t.error else (
                "ok" if t.within in (None, True) else "**over the limits on tune**")
            floats = str(len(t.float_layers)) if t.target in ("onnx-int8", "tflite-int8") else "-"
            if t.units:
                floats += f" of {t.units}"
                if status == "ok" and len(t.float_layers) == t.units:
                    status = "ok, but **every layer in float** (no int8 layer left)"
            if t.baseline is not None:
                base_ref = ref_tune if paired else self._pair_reference("tune")
                lines.append(f"| {t.baseline_what} ({t.target}: the guard's reference, gestures) | "
                             + " | ".join(_cells(t.baseline, base_ref)) + " | - | - | - | - | - | - | - |")
            lines.append(f"| `{t.path.name}` ({t.target}) | "
                         + " | ".join(_cells(t.tune, ref_tune) + _cells(t.report, ref_report))
                         + f" | {floats} | {t.size / 1024:.0f} | {t.seconds:.1f} | {status} |")
        for t in stage.targets:
            if t.trials:
                lines += ["", f"Mixed precision ({t.target}): layers kept in float: "
                          + (", ".join(f"`{n}`" for n in t.float_layers) or "none") + ". Trials on tune "
                          + ("in the pair with the FP32 classifier (gestures) " if t.baseline and not paired else "")
                          + "(layers in float -> metric / agreement): "
                          + ", ".join(f"{x['float_layers']}{' (one given back)' if x.get('gave_back') else ''} -> "
                                      f"{x['value']:.2f} / {_fmt(x['agreement'])}" for x in t.trials)]
                if t.ranked_by:
                    lines += ["", f"Layers ranked by {t.ranked_by}."
                              + (" Pi 5 instructions per inference each float layer adds: "
                                 + ", ".join(f"`{n}` {c / 1e6:.2f} M"
                                             + (f" (gains {t.unit_gains[n]:+.2f} points alone)" if n in t.unit_gains
                                                else "") for n, c in t.unit_costs.items())
                                 if t.unit_costs else "")]
                if t.within is False:
                    lines += ["", f"**{t.target}: no candidate held the limits on the tune photos**; the best was "
                              f"written as `{t.path.name}`."]
            if t.board:
                lines += ["", f"Board cost ({t.target}, modelled instructions per inference, `quantize/board_cost.py`): "
                          + "; ".join(f"{cpu} {b['instructions'] / 1e6:.1f} M = {b['x_fp32']:.2f}x its FP32 form "
                                      f"({b['fp32'] / 1e6:.1f} M), {b['x_all_int8']:.2f}x all-int8 "
                                      f"({b['all_int8'] / 1e6:.1f} M)" for cpu, b in t.board.items())]
            if t.notes:
                lines += ["", f"{t.target}: {t.notes}"]
        if ref_tune is not None and ref_tune.value <= 0:
            lines += ["", f"**The FP32 model scores 0 {ref_tune.metric} on the tune photos: the guard cannot judge "
                          "the INT8 artifacts (an untrained model, or a task mismatch).**"]
        if c.get("skipped_files"):
            lines += ["", "Skipped (unreadable) calibration images: " + ", ".join(c["skipped_files"][:20])]
        return lines + [""]

    def markdown(self) -> str:
        names = f"`{Path(self.model).name}`" + (f" + `{Path(self.classifier).name}`" if self.classifier else "")
        lines = [f"# INT8 calibration of {names}", "",
                 f"- method: **{self.method}** activation ranges (ONNX and TensorRT cache symmetric; TFLite "
                 "asymmetric, from the same calibration photos, entropy read as percentile), per-channel symmetric "
                 "int8 weights",
                 f"- guard: on the **tune** photos, at most {self.max_drop} points below FP32 against the annotations "
                 + (f"({self.max_drop50:g} in mAP50 where the metric has it) " if self.max_drop50 is not None else "")
                 + f"and at most {100 - self.min_agreement:g} points of agreement lost (mAP50-95 against FP32's own "
                 "detections); in a pair, the detector's float layers are chosen "
                 + ("on the pair's gestures with the FP32 classifier behind it" if self.detector_guard == "pair"
                    else "on hands, the detector alone (`--detector-guard hands`)")
                 + ", and the classifier answers for what it adds to that INT8 detector; "
                 "figures on the **report** photos were not used for any choice"
                 if self.photo_sets else "- accuracy guard: off"]
        for name, d in self.photo_sets.items():
            lines.append(f"- {name} photos: {d['images']} ({d['labelled_images']} scored against annotations): "
                         f"{d['sources']}")
        lines += ["", "Metric: mAP50-95 (F1 for a classifier on its own), 2nd: mAP50 (accuracy); agreement: "
                      "mAP50-95 against the FP32 model's detections at its operating threshold; drops in points.",
                  ""]
        for stage in self.stages:
            lines += self._stage_lines(stage)
        if self.pairs:
            lines += ["## Two-stage pipeline (gestures): both stages INT8 vs the FP32 pair", "",
                      "| format | photos | FP32 mAP50-95 / mAP50 | INT8 mAP50-95 (drop) | INT8 mAP50 (drop) | "
                      "agreement | status |", "|---|---|---|---|---|---|---|"]
            for p in self.pairs:
                if p.error:
                    lines.append(f"| {p.target} | - | - | - | - | - | failed: {p.error} |")
                    continue
                for name, (ref, got) in p.scores.items():
                    status = ("ok" if p.within else "**over the limits**") if name == "report" else "(tuned here)"
                    lines.append(f"| {p.target} | {name} | {ref.value:.2f} / {ref.secondary['mAP50']:.2f} | "
                                 + " | ".join(_cells(got, ref)) + f" | {status} |")
            lines.append("")
        lines.append(f"Total {self.seconds:.0f} s.")
        return "\n".join(lines) + "\n"

    def write(self) -> tuple[Path, Path]:
        md, js = self.out / f"{REPORT_NAME}.md", self.out / f"{REPORT_NAME}.json"
        write_text_atomic(js, json.dumps(self.as_dict(), indent=1))
        write_text_atomic(md, self.markdown())
        return md, js
