"""INT8 hand landmark model: ``calibrate --model hand_landmark_lite.tflite``.

MediaPipe's landmark model is a TFLite file with fp16 weights, so the route is TFLite -> TFLite:
its float32, signed form (``tflite_fold``), then the project's TFLite INT8 route (``tflite_int8``:
ai-edge-quantizer recipes, our percentile activation ranges, layers kept in float chosen by the
guard of ``sensitivity``). Calibration inputs are the spec's own square hand crops (the landmarker's
``hand_input``) cut at the annotated boxes of the subsample photos.

The guard is in pixels: per hand, the mean distance between the INT8 and the FP32 model's 21 points
in frame pixels, as a percentage of the hand box's long side (so small and large hands weigh
alike), and the difference of their presence scores. Its figure is *point agreement* = 100 - that
mean percentage (FP32 agrees with itself at 100), so "at most ``max_point_error`` points below FP32"
is the usual drop limit of ``sensitivity.Limits``; the presence difference is a second limit. Float
layers are chosen on the tune photos and figures are given on the report photos (``photo_sets``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hagrid_edge.data.annotations import Sample
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.deploy.rpi.litert_backend import LiteRTBackend
from hagrid_edge.errors import DataError, HagridEdgeError
from hagrid_edge.images import read_rgb
from hagrid_edge.landmarks import HandLandmarks, Landmarker, find_landmark_spec, hand_input, point_errors
from hagrid_edge.paths import atomic_path
from hagrid_edge.quantize import calib_data
from hagrid_edge.quantize.accuracy import Score
from hagrid_edge.quantize.candidates import Candidate
from hagrid_edge.quantize.choices import tflite_levels
from hagrid_edge.quantize.landmark_choices import DEFAULT_MAX_POINT_ERROR, DEFAULT_MAX_PRESENCE_DIFF
from hagrid_edge.quantize.orchestrator import CalibrationOptions, attempt, over_limits_path
from hagrid_edge.quantize.photo_sets import PhotoSet, photo_sets
from hagrid_edge.quantize.report import Report, StageReport, TargetResult
from hagrid_edge.quantize.sensitivity import Limits, mixed_precision
from hagrid_edge.quantize.tflite_export import input_range, tensor_quant, with_embedded_spec
from hagrid_edge.quantize.tflite_fold import float32_tflite
from hagrid_edge.quantize.tflite_int8 import QUANTIZER, TFLiteCandidates
from hagrid_edge.spec import ModelSpec, save_sidecar, sha256_file

NOT_APPLICABLE = {
    "onnx-int8": "not applicable: the source is a TFLite file (no ONNX graph to place Q/DQ in)",
    "trt-cache": "not applicable: the source is a TFLite file (a TensorRT cache is made for an ONNX graph)",
    "tflite-fp16": "not applicable: the source already stores its weights in fp16 (it is the FP16 form)",
}
FOLD_CHECK_INPUTS = 100  # hand crops on which the float32 form is compared with the original
SOURCES = "calibrate takes an FP32 .onnx or a training checkpoint, or a hand landmark .tflite"
UPPER_Z = 1.645  # the guard's bound on the mean point error: one-sided 95 % (normal approximation)
METRIC = "point_agreement"  # 100 - mean point error in % of the hand box's long side


@dataclass
class LandmarkOptions(CalibrationOptions):
    max_point_error: float = DEFAULT_MAX_POINT_ERROR
    max_presence_diff: float = DEFAULT_MAX_PRESENCE_DIFF


@dataclass
class LandmarkLimits(Limits):
    """Point agreement within ``max_drop`` of FP32's 100, and mean presence difference at most ``max_presence_diff``."""

    max_presence_diff: float = DEFAULT_MAX_PRESENCE_DIFF

    def holds(self, reference: Score, score: Score) -> bool:
        """Judged on the upper confidence bound of the mean point error, not the mean: a few hands carry most of
        the error, so a mean over a small tune set would pass models that miss the limit on other photos."""
        bound = replace(score, value=100.0 - score.secondary["point_error_pct_box_upper"])
        return super().holds(reference, bound) and score.secondary["presence_diff"] <= self.max_presence_diff


def landmark_source_spec(path: Path, spec_file: Path | None) -> ModelSpec:
    """The spec of a TFLite hand landmark model; any other TFLite is refused in one line."""
    if not path.is_file():
        raise HagridEdgeError(f"--model {path}: no such file ({SOURCES})")
    spec = find_landmark_spec(path, spec_file)
    if spec is None:
        raise HagridEdgeError(f"--model {path}: a TFLite model that is not a hand landmark model (its spec's task "
                              f"is not 'landmarks'); {SOURCES}")
    return spec


def hand_inputs(data: Path, spec: ModelSpec, limit: int | None) -> tuple[list[np.ndarray], list[Sample], dict]:
    """The model inputs of every annotated hand of the subsample photos, the photos read, and what fed them."""
    samples, _ = calib_data.subsample(data, limit)
    inputs: list[np.ndarray] = []
    skipped: list[str] = []
    read: list[Sample] = []
    for s in samples:
        try:
            frame = read_rgb(s.image_path)
        except DataError:
            skipped.append(str(s.image_path))
            continue
        read.append(s)
        inputs += [hand_input(frame, box, spec)[0] for box in s.boxes_xyxy(frame.shape[1], frame.shape[0])]
    if not inputs:
        raise DataError(f"{data}: the subsample gave no hand crops to calibrate on "
                        f"({len(samples)} photos, {len(skipped)} unreadable)")
    return inputs, read, {"data": str(data), "split": calib_data.SPLIT, "images": len(samples) - len(skipped),
                    "skipped": len(skipped), "skipped_files": skipped, "inputs": len(inputs),
                    "what": "square hand crops (the spec's crop) at the annotated boxes"}


def fold_check(original: Landmarker, folded: Landmarker, inputs: Sequence[np.ndarray]) -> dict:
    """Largest absolute difference of each output role between the two models on the same inputs."""
    diff: dict[str, float] = {}
    for x in inputs:
        a, b = original.backend.infer(x), folded.backend.infer(x)
        for role, name in original.spec.output_names.items():
            d = float(np.abs(np.asarray(a[name], np.float32) - np.asarray(b[folded.spec.output_names[role]])).max())
            diff[role] = max(diff.get(role, 0.0), d)
    return {"inputs": len(inputs), "max_abs_diff": diff}


class PointScorer:
    """An artifact's points and presence on every annotated hand of one photo set, against the FP32 model's."""

    def __init__(self, photos: PhotoSet, fp32: Candidate, threads: int | None) -> None:
        self.photos, self.threads = photos, threads
        self.reference = self._run(fp32.path, fp32.spec)
        self.history: list[Score] = []  # every score given, in order (the guard's trials keep only the headline)

    def _run(self, path: Path, spec: ModelSpec) -> list[tuple[HandLandmarks, np.ndarray]]:
        """Per photo: the model's hands and the long side of each annotated box."""
        landmarker = Landmarker(open_backend(path, spec=spec, threads=self.threads))
        out = []
        for s in self.photos.samples:
            frame = read_rgb(s.image_path)
            boxes = s.boxes_xyxy(frame.shape[1], frame.shape[0])
            side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clip(1)
            out.append((landmarker(frame, boxes), side))
        return out

    def score(self, path: Path, spec: ModelSpec) -> Score:
        t0 = time.perf_counter()
        threshold = spec.score_threshold  # a hand is kept when its presence reaches it
        px, pct, presence, flips = [], [], [], 0
        for (got, side), (ref, _) in zip(self._run(Path(path), spec), self.reference):  # noqa: B905 (Python 3.8)
            if len(ref):
                dist = point_errors(got.points, ref.points)
                px += dist.tolist()
                pct += (100 * dist / side).tolist()
                presence += np.abs(got.presence - ref.presence).tolist()
                flips += int(np.sum((got.presence >= threshold) != (ref.presence >= threshold)))
        if not px:
            raise DataError(f"{self.photos.name} photos: no annotated hands to compare landmarks on")
        error = float(np.mean(pct))
        upper = error + UPPER_Z * float(np.std(pct)) / np.sqrt(len(pct))
        secondary = {"point_error_pct_box": round(error, 3), "point_error_pct_box_upper": round(upper, 3), "point_error_px": round(float(np.mean(px)), 3),
                     "p95_point_error_pct_box": round(float(np.percentile(pct, 95)), 3),
                     "presence_diff": round(float(np.mean(presence)), 4),
                     "max_presence_diff": round(float(np.max(presence)), 4), "presence_flips": flips}
        score = Score(METRIC, round(100.0 - error, 3), secondary, "landmarks", len(self.photos.samples),
                      round(time.perf_counter() - t0, 2), self.photos.name, {"hands": len(px)})
        self.history.append(score)
        return score


def artifact_spec(tflite: Path, source: ModelSpec, provenance: dict) -> ModelSpec:
    """The spec of a quantized form of ``source``: its input tensor and the int8 quantization of its I/O."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite))
    (inp,) = interp.get_input_details()
    outs = {d["name"]: d for d in interp.get_output_details()}
    missing = [n for n in source.output_names.values() if n not in outs]
    if missing:
        raise HagridEdgeError(f"{tflite.name}: outputs {missing} of the source model are missing (has {list(outs)})")
    output_quant = {role: q for role, n in source.output_names.items() if (q := tensor_quant(outs[n])) is not None}
    return replace(source, input_name=inp["name"], input_dtype=np.dtype(inp["dtype"]).name, input_quant=tensor_quant(inp),
                   output_quant=output_quant, provenance=provenance)


def write_tflite(data: bytes, spec: ModelSpec, out_path: Path) -> None:
    """``data`` with ``spec`` embedded, written atomically; it must load and run under its spec first."""
    with atomic_path(out_path) as part:
        part.write_bytes(with_embedded_spec(data, spec))
        backend = LiteRTBackend(part, spec, threads=1)  # the written file loads and runs under its spec
        h, w = spec.input_size
        backend.infer(np.zeros((1, h, w, 3), spec.input_dtype))
        save_sidecar(spec, out_path)


@dataclass
class LandmarkReport(Report):
    """The calibration report of a landmark model: the same files and layout, figures in pixels."""

    max_point_error: float = DEFAULT_MAX_POINT_ERROR
    max_presence_diff: float = DEFAULT_MAX_PRESENCE_DIFF
    fold: dict = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = super().as_dict()
        d["limits"] = {"max_point_error_pct_box": self.max_point_error, "max_presence_diff": self.max_presence_diff,
                       "judged_on": "tune", "metric": f"{METRIC} = 100 - mean point error (% of the hand box's "
                                                          "long side) against the FP32 model"}
        return {**d, "fold": self.fold, "not_applicable": self.not_applicable}

    def _rows(self, stage: StageReport) -> list[str]:
        lines = ["| artifact | photos | hands | point error px | % of box side (p95) | presence diff (max) | "
                 "presence flips | float layers | size (KB) | status |", "|---|---|---|---|---|---|---|---|---|---|"]
        fp32_size = stage.fp32_path.stat().st_size / 1024
        lines.append(f"| `{stage.fp32_path.name}` (FP32 reference) | - | - | 0 | 0 | 0 | 0 | all | {fp32_size:.0f} | ok |")
        for t in stage.targets:
            status = ("failed: " + t.error.replace("|", "/")) if t.error else (
                "ok" if t.within in (None, True) else "**over the limits on tune**")
            for name in ("tune", "report"):
                s = getattr(t, name)
                if s is None:
                    continue
                v = s.secondary
                lines.append(f"| `{t.path.name}` | {name} ({s.images} photos) | {s.agreement.get('hands')} | "
                             f"{v['point_error_px']:.2f} | {v['point_error_pct_box']:.2f} "
                             f"({v['p95_point_error_pct_box']:.2f}) | {v['presence_diff']:.4f} "
                             f"({v['max_presence_diff']:.3f}) | {v['presence_flips']} | {len(t.float_layers)} | {t.size / 1024:.0f} | "
                             + (status if name == "tune" else "(nothing chosen here)") + " |")
            if t.tune is None and t.report is None:
                lines.append(f"| `{t.path.name}` | - | - | - | - | - | - | {len(t.float_layers)} | {t.size / 1024:.0f} | "
                             f"{status} |")
            if t.trials:
                lines += ["", "Layers kept in float: " + (", ".join(f"`{n}`" for n in t.float_layers) or "none")
                          + ". Trials on tune (layers in float -> mean point error in % of the box side / presence "
                          "difference): " + ", ".join(f"{x['float_layers']} -> {100 - x['value']:.2f} / "
                                                      f"{x.get('presence_diff', float('nan')):.4f}" for x in t.trials),
                          ""]
        return lines

    def markdown(self) -> str:
        lines = [f"# INT8 calibration of `{Path(self.model).name}` (hand landmarks)", ""]
        if self.fold:
            diff = ", ".join(f"{r} {v:.2g}" for r, v in self.fold["check"]["max_abs_diff"].items())
            lines.append(f"- float32 form: {self.fold['folded']} fp16 DEQUANTIZE constants folded"
                         + (", serving signature added" if self.fold["signature_added"] else "")
                         + f"; outputs vs the original on {self.fold['check']['inputs']} hand crops: max |diff| {diff}")
        for stage in self.stages:
            c = stage.calibration
            lines.append(f"- calibration: {c['inputs']} {c['what']} of {c['images']} photos from `{c['data']}` "
                         f"({c['split']}), {c['skipped']} skipped; {self.method} activation ranges, int8 weights "
                         "per channel, int8 activations, float heads")
        lines.append(f"- guard: on the **tune** photos, mean INT8-vs-FP32 point distance at most "
                     f"{self.max_point_error:g} % of the hand box's long side and mean presence difference at most "
                     f"{self.max_presence_diff:g}; the **report** photos were not used for any choice"
                     if self.photo_sets else "- accuracy guard: off")
        for name, d in self.photo_sets.items():
            lines.append(f"- {name} photos: {d['images']}: {d['sources']}")
        for target, why in self.not_applicable.items():
            lines.append(f"- {target}: {why}")
        lines.append("")
        for stage in self.stages:
            lines += self._rows(stage)
        lines += ["", f"Total {self.seconds:.0f} s."]
        return "\n".join(lines) + "\n"


def calibrate_landmarks(opts: LandmarkOptions) -> LandmarkReport:
    """The float32 form, then INT8 guarded in pixels (see the module docstring); writes the report."""
    t_start = time.perf_counter()
    spec = landmark_source_spec(opts.model, opts.spec_file)
    folded = float32_tflite(opts.model)  # a corrupt file or bad data fail before anything is written
    inputs, photos, calibration = hand_inputs(opts.data, spec, opts.limit)
    sets = dict(zip(("tune", "report"), photo_sets(opts.data, opts.eval_limit))) if opts.guard else {}  # noqa: B905
    opts.out.mkdir(parents=True, exist_ok=True)
    stem = opts.model.stem
    fp32_path = opts.out / f"{stem}_fp32.tflite"
    source = {"source_file": opts.model.name, "source_sha256": sha256_file(opts.model)}
    fp32_spec = replace(spec, provenance={**spec.provenance, **source, "precision": "fp32",
                                          "converter": f"fp16 DEQUANTIZE constants folded ({folded.folded})"})
    write_tflite(folded.data, fp32_spec, fp32_path)
    original = Landmarker(open_backend(opts.model, spec=spec, threads=opts.threads))
    check = fold_check(original, Landmarker(open_backend(fp32_path, spec=fp32_spec, threads=opts.threads)),
                       inputs[:FOLD_CHECK_INPUTS])
    limits = LandmarkLimits(opts.max_point_error, None, opts.max_presence_diff)
    report = LandmarkReport(model=str(opts.model), classifier=None, out=opts.out, method=opts.method,
                            max_drop=opts.max_point_error, min_agreement=0.0,
                            photo_sets={k: v.describe() for k, v in sets.items()},
                            max_point_error=opts.max_point_error, max_presence_diff=opts.max_presence_diff,
                            fold={"folded": folded.folded, "signature_added": folded.signature_added, "check": check},
                            not_applicable={t: NOT_APPLICABLE[t] for t in opts.targets if t in NOT_APPLICABLE})
    calibration["seconds"], calibration["tensors"] = 0.0, 0
    stage = StageReport("landmarks", str(opts.model), fp32_path, {"format": "tflite"}, calibration)
    report.stages.append(stage)
    if "tflite-int8" in opts.targets:
        result = TargetResult("tflite-int8", opts.out / f"{opts.model.stem}_int8.tflite")
        stage.targets.append(attempt(result, lambda: _int8(result, opts, fp32_spec, Stage(inputs, photos, calibration),
                                                            sets, limits)))
    report.seconds = round(time.perf_counter() - t_start, 2)
    report.write()
    return report


@dataclass
class Stage:
    """The calibration material of the landmark model: hand crops, the photos they come from, their record."""

    inputs: list[np.ndarray]
    photos: list[Sample]
    calibration: dict


def _int8(result: TargetResult, opts: LandmarkOptions, fp32_spec: ModelSpec, stage: Stage, sets: dict[str, PhotoSet],
          limits: LandmarkLimits) -> None:
    """The INT8 artifact: guarded on the tune photos (when ``sets``), scored on the report photos."""
    from importlib.metadata import version

    t0 = time.perf_counter()
    fp32 = Candidate(opts.out / f"{opts.model.stem}_fp32.tflite", fp32_spec, [])
    provenance = {**fp32_spec.provenance, "precision": "int8", "converter": f"{QUANTIZER} {version(QUANTIZER)}",
                  "weights": "int8 per-channel", "activations": "int8", "calibration": stage.calibration}
    with tempfile.TemporaryDirectory(prefix="hagrid-landmarks.") as work:
        cands = TFLiteCandidates(fp32.path, stage.inputs, lambda p: artifact_spec(p, fp32_spec, provenance),
                                 Path(work), input_range(fp32_spec),
                                 levels=tflite_levels(opts.method),
                                 layout="NHWC")
        stage.calibration.update(seconds=round(time.perf_counter() - t0, 2), tensors=len(cands.qsvs))
        if sets:
            tune = PointScorer(sets["tune"], fp32, opts.threads)
            reference = tune.score(fp32.path, fp32.spec)  # 100: FP32 agrees with itself
            guard = mixed_precision(cands, fp32, stage.photos, tune, reference, limits)
            chosen = guard.candidate
            result.tune, result.within, result.trials = guard.score, guard.within, guard.trials
            result.sensitivity = guard.sensitivity[:10]
            for trial, score in zip(result.trials, tune.history[1:]):  # noqa: B905 (Python 3.8)
                trial.update({k: score.secondary[k] for k in ("presence_diff", "point_error_px",
                                                              "point_error_pct_box_upper")})
        else:
            chosen = cands.build()
        result.float_layers = chosen.float_layers
        if result.within is False:
            result.path = over_limits_path(result.path)
        spec = replace(chosen.spec, provenance={**chosen.spec.provenance, "float_layers": chosen.float_layers,
                                                "guard": {"within_limits_on_tune": result.within}})
        write_tflite(chosen.path.read_bytes(), spec, result.path)
    if sets:
        result.report = PointScorer(sets["report"], fp32, opts.threads).score(result.path, spec)
