"""``calibrate``: one calibration pass per model over the HaGRID subsample, then every requested target.

Flow per model (the detector, and the crop classifier behind it when ``--classifier`` is given):
resolve its spec -> cut decode + NMS out of the graph when they are inside -> opset >= 13 -> FP32
compute model written beside the artifacts -> calibration inputs through the spec's preprocessing
-> activation ranges collected once -> per target: QDQ ONNX, TensorRT cache, TFLite INT8 / FP16.

The guard chooses float layers on the tune photos and the report gives figures on other photos
(``photo_sets``): the detector on its own task, the classifier in the two-stage pipeline behind the
detector's INT8 form of the same format (each stage is held to the limits for what it adds: the
classifier's reference is its FP32 form behind that INT8 detector), then the whole INT8 pair is
reported against the FP32 pair. Every
target runs behind the same failure wrapper: a target that fails is recorded in the report with its
error, the others still run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from hagrid_edge.data.annotations import Sample
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.formats import CHECKPOINT_SUFFIXES
from hagrid_edge.quantize import board_cost, calib_data, onnx_int8, trt_cache
from hagrid_edge.quantize.accuracy import (
    PipelineFactory,
    Score,
    Scorer,
    classifier_alone,
    detector_pipeline,
    fp32_truth,
    guard_task,
    paired_pipeline,
)
from hagrid_edge.quantize.candidates import Candidate, Candidates, OnnxCandidates
from hagrid_edge.quantize.choices import (
    DEFAULT_MAX_DROP,
    DEFAULT_MAX_DROP50,
    DEFAULT_METHOD,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_TRT_VERSION,
    DETECTOR_GUARDS,
    METHODS,
    TARGETS,
)
from hagrid_edge.quantize.graph_cut import split_detector
from hagrid_edge.quantize.onnx_files import fix_batch, load_model, save_onnx_with_spec
from hagrid_edge.quantize.photo_sets import PhotoSet, photo_sets, trained_on
from hagrid_edge.quantize.report import PairResult, Report, StageReport, TargetResult
from hagrid_edge.quantize.sensitivity import Limits, mixed_precision
from hagrid_edge.spec import ModelSpec, resolve_spec, sha256_file

CHECKPOINTS = CHECKPOINT_SUFFIXES  # training checkpoints, from the one format table
INT8_FORMATS = ("onnx-int8", "tflite-int8")  # the targets a two-stage pipeline is guarded and reported in


@dataclass
class CalibrationOptions:
    """What every calibration route takes (detectors and classifiers here; landmark models in landmarks_int8)."""

    model: Path
    data: Path
    out: Path
    targets: tuple[str, ...] = TARGETS
    method: str = DEFAULT_METHOD
    limit: int | None = None
    spec_file: Path | None = None
    eval_limit: int | None = None
    threads: int | None = None
    guard: bool = True


@dataclass
class Options(CalibrationOptions):
    max_drop: float = DEFAULT_MAX_DROP
    max_drop50: float | None = DEFAULT_MAX_DROP50  # detectors and pairs: mAP50 points (None: not held)
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    classifier: Path | None = None
    classifier_spec: Path | None = None
    trt_version: str = DEFAULT_TRT_VERSION
    detector_guard: str = DETECTOR_GUARDS[0]  # with a classifier: "pair" or "hands" (the detector alone)
    max_board_ratio: float | None = None  # TFLite INT8: Pi 5 instructions at most this share of its FP32 form's


@dataclass
class Stage:
    """One model of the pipeline: its FP32 compute graph, calibration and guard measures."""

    role: str  # "detector" or "classifier"
    source: Path
    fp32: onnx.ModelProto
    spec: ModelSpec
    info: dict
    fp32_path: Path
    inputs: list[np.ndarray]
    calib_photos: list[Sample]
    calibration: dict
    ranges: object
    calib_seconds: float
    scorers: dict[str, Scorer] = field(default_factory=dict)  # photo set name -> scorer (standalone stages)
    reference: dict[str, Score] = field(default_factory=dict)  # photo set name -> FP32 score
    chosen: dict[str, Candidate] = field(default_factory=dict)  # INT8 target -> artifact written

    @property
    def fp32_candidate(self) -> Candidate:
        return Candidate(self.fp32_path, self.spec, [])


def _exported(checkpoint: Path, tmp: Path) -> Path:
    """A training checkpoint exported to FP32 ONNX by the project's exporter (``hagrid-edge export``)."""
    from hagrid_edge.export import export_onnx

    if not checkpoint.is_file():
        raise HagridEdgeError(f"--model {checkpoint}: no such checkpoint")
    out = tmp / f"{checkpoint.stem}.onnx"
    export_onnx(checkpoint, out)
    return out


def prepare_fp32(source: Path, spec_file: Path | None, option: str = "--model"
                 ) -> tuple[onnx.ModelProto, ModelSpec, dict]:
    """The FP32 compute graph (decode + NMS cut out, opset >= 13, nodes named) and its spec."""
    suffix = source.suffix.lower()
    if suffix in CHECKPOINTS:
        with tempfile.TemporaryDirectory(prefix="hagrid-export.") as tmp:
            exported = _exported(source, Path(tmp))
            model, spec = load_model(exported), resolve_spec(exported)
    elif suffix == ".onnx":
        if not source.is_file():
            raise HagridEdgeError(f"{option} {source}: no such file")
        spec = resolve_spec(source, spec_file)
        model = load_model(source)
    else:
        raise HagridEdgeError(f"{option} {source}: calibrate takes an FP32 .onnx or a training checkpoint "
                              f"({', '.join(CHECKPOINTS)})")
    info: dict = {"source": str(source), "source_sha256": sha256_file(source),
                  "source_opset": onnx_int8.opset_of(model), "graph_cut": False}
    if spec.outputs == "nms":
        model, spec = split_detector(model, spec)
        info["graph_cut"] = True
    model = onnx_int8.name_nodes(onnx_int8.upgrade_opset(model, str(source)))
    onnx_int8.check_supported_ops(model, str(source))
    info["opset"] = onnx_int8.opset_of(model)
    spec = ModelSpec.from_dict({**spec.to_dict(), "provenance": {
        **spec.provenance, "source_sha256": info["source_sha256"], "precision": "fp32"}})
    return model, spec, info


def _check_pair(det: ModelSpec, cls: ModelSpec, opts: Options) -> None:
    if det.task != "detector":
        raise HagridEdgeError(f"--model {opts.model}: a crop classifier needs a hand detector in front of it "
                              f"(this model's spec says {det.task})")
    if cls.task != "classifier" or cls.crop is None:
        kind = "a full-frame classifier" if cls.task == "classifier" else f"a {cls.task}"
        raise HagridEdgeError(f"--classifier {opts.classifier}: not a hand-crop classifier ({kind}); "
                              "the two-stage pipeline runs a crop classifier on each detected hand")


def _stage(opts: Options, source: Path, spec_file: Path | None, option: str) -> Stage:
    fp32, spec, info = prepare_fp32(source, spec_file, option)
    samples, _ = calib_data.subsample(opts.data, opts.limit)
    inputs, stats = calib_data.calibration_batches(opts.data, spec, opts.limit)
    t0 = time.perf_counter()
    ranges = onnx_int8.collect_ranges(fp32, spec.input_name, inputs, opts.method)
    calib_seconds = round(time.perf_counter() - t0, 2)
    calibration = {"method": opts.method, "data": str(opts.data), "split": calib_data.SPLIT,
                   "images": stats.used, "skipped": stats.skipped, "skipped_files": stats.skipped_files,
                   "inputs": stats.inputs, "tensors": len(ranges.data), "seconds": calib_seconds}
    fp32_path = save_onnx_with_spec(fp32, spec, opts.out / f"{source.stem}_fp32.onnx")
    role = "classifier" if spec.task == "classifier" else "detector"
    readable = [s for s in samples if str(s.image_path) not in stats.skipped_files]
    return Stage(role, source, fp32, spec, info, fp32_path, inputs, readable, calibration, ranges, calib_seconds)


def over_limits_path(path: Path) -> Path:
    """Where an artifact the guard could not hold to its limits is written: never under the name a
    pipeline or a board guide loads."""
    return path.with_name(f"{path.stem}_over_limits{path.suffix}")


def _with_calibration(spec: ModelSpec, precision: str, calibration: dict, **extra) -> ModelSpec:
    return ModelSpec.from_dict({**spec.to_dict(), "provenance": {
        **spec.provenance, "precision": precision, "calibration": calibration, **extra}})


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def _move_aside(path: Path, before: int | None) -> str:
    """After a failed target, no file answers to its artifact's name: an earlier run's artifact (or what
    this run left half-made) is renamed, with its spec sidecar, and the error says where it went."""
    if not path.is_file():
        return ""
    tag = "previous" if _mtime(path) == before else "incomplete"
    aside = path.with_name(f"{path.stem}_{tag}{path.suffix}")
    for src, dst in ((path, aside), (Path(f"{path}.json"), Path(f"{aside}.json"))):
        if src.is_file():
            src.replace(dst)
    return f" ({'an earlier run' if tag == 'previous' else 'this run'}'s {path.name} moved to {aside.name})"


def attempt(result: TargetResult, build: Callable[[], None]) -> TargetResult:
    """Run one target; a failure is recorded on its result (one line) and the other targets still run."""
    t0 = time.perf_counter()
    before = _mtime(result.path)
    try:
        build()
    except Exception as e:  # a failed converter or quantizer must not take the other targets down
        text = str(e).strip()
        result.error = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        result.error += _move_aside(result.path, before)
    result.seconds = round(time.perf_counter() - t0, 2)
    result.size = result.path.stat().st_size if result.path.is_file() else 0
    return result


class Calibration:
    """One ``calibrate`` run: the stages, the photo sets, and every target's result."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.limits = Limits(opts.max_drop, opts.min_agreement, max_drop50=opts.max_drop50)
        self.sets: dict[str, PhotoSet] = {}
        self.truth: dict[tuple[str, str], list] = {}  # (pipeline, photo set) -> FP32 detections
        self.classifier: Stage | None = None  # the crop classifier behind the detector, when there is one

    # ---- guard measures ------------------------------------------------------------------------
    def _truth(self, key: str, photos: PhotoSet, make: PipelineFactory, fp32: Candidate) -> list:
        if (key, photos.name) not in self.truth:
            self.truth[key, photos.name] = fp32_truth(photos, make, fp32.path, fp32.spec)
        return self.truth[key, photos.name]

    def standalone_scorer(self, stage: Stage, photos: PhotoSet) -> Scorer:
        """The stage's model on its own: a detector on its task, a classifier on the annotated hands."""
        if photos.name not in stage.scorers:
            task = guard_task(stage.spec)
            if task == "classify":
                stage.scorers[photos.name] = Scorer(photos, task, classifier_alone(self.opts.threads))
            else:
                make = detector_pipeline(self.opts.threads)
                truth = self._truth(stage.role, photos, make, stage.fp32_candidate)
                stage.scorers[photos.name] = Scorer(photos, task, make, truth)
            stage.reference[photos.name] = stage.scorers[photos.name].score(stage.fp32_path, stage.spec)
        return stage.scorers[photos.name]

    def _pair_truth(self, det: Stage, cls: Stage, photos: PhotoSet) -> list:
        return self._truth("pair", photos, paired_pipeline(self.opts.threads, detector=(det.fp32_path, det.spec)),
                           cls.fp32_candidate)

    def pair_scorer(self, det: Stage, det_artifact: Candidate, cls: Stage, photos: PhotoSet) -> Scorer:
        """Any classifier artifact behind ``det_artifact``, against the FP32 pair's own gestures."""
        make = paired_pipeline(self.opts.threads, detector=(det_artifact.path, det_artifact.spec))
        return Scorer(photos, "gestures", make, self._pair_truth(det, cls, photos))

    def detector_pair_scorer(self, det: Stage, cls: Stage, photos: PhotoSet) -> Scorer:
        """Any detector artifact with the FP32 classifier behind it, against the FP32 pair's own gestures."""
        make = paired_pipeline(self.opts.threads, classifier=(cls.fp32_path, cls.spec))
        return Scorer(photos, "gestures", make, self._pair_truth(det, cls, photos))

    def pair_reference(self, det: Stage, cls: Stage, photos: PhotoSet) -> Score:
        key = f"pair-reference-{photos.name}"
        if key not in cls.reference:
            cls.reference[key] = self.pair_scorer(det, det.fp32_candidate, cls, photos).score(cls.fp32_path, cls.spec)
        return cls.reference[key]

    # ---- one INT8 target of one stage --------------------------------------------------------------
    def guarded(self, stage: Stage, cands: Candidates, result: TargetResult, partner: Stage | None) -> Candidate:
        """The candidate to ship, guarded on the tune photos in the pipeline that runs and scored on the
        report photos. A detector with a classifier behind it is guarded on the pair's gestures with the
        FP32 classifier (the classifier's labels flip when a box moves by a pixel, so the hands' own
        agreement does not promise the pair's); the classifier then in the pair behind ``partner``'s
        INT8 form of the same target. Each answers for what its INT8 adds: the reference is the pair with
        the stage's all-float form in the same format."""
        if not self.opts.guard:
            return cands.build()
        tune, report = self.sets["tune"], self.sets["report"]
        if partner is not None:
            det_int8 = partner.chosen.get(cands.target)
            if det_int8 is None:
                raise HagridEdgeError(f"the detector's {cands.target} failed, so the classifier cannot be guarded "
                                      "in the pipeline")
            scorer = self.pair_scorer(partner, det_int8, stage, tune)
            result.baseline = scorer.score(stage.fp32_path, stage.spec)
            result.baseline_what = "FP32 classifier behind this INT8 detector"
        elif self.classifier is not None and self.opts.detector_guard == "pair":
            scorer = self.detector_pair_scorer(stage, self.classifier, tune)
            float_form = cands.build(float_layers=cands.units)
            result.baseline = scorer.score(float_form.path, float_form.spec)
            result.baseline_what = "the pair with this format's all-float detector and the FP32 classifier"
        else:
            scorer = self.standalone_scorer(stage, tune)
        reference = result.baseline or stage.reference["tune"]
        costs = cands.unit_costs()
        guard = mixed_precision(cands, stage.fp32_candidate, stage.calib_photos, scorer, reference, self.limits,
                                costs)
        result.tune, result.within, result.trials = guard.score, guard.within, guard.trials
        result.float_layers, result.sensitivity = guard.candidate.float_layers, guard.sensitivity[:10]
        result.units, result.ranked_by = len(cands.units), guard.ranked_by
        if costs:
            gains = dict(guard.gains)
            result.unit_costs = {u: costs[u] for u in guard.candidate.float_layers}
            result.unit_gains = {u: gains[u] for u in guard.candidate.float_layers if u in gains}
        if partner is None:
            if result.baseline is not None:  # guarded on the pair: the detector's own row stays on its own task
                result.tune = self.standalone_scorer(stage, tune).score(guard.candidate.path, guard.candidate.spec)
                result.within = guard.within and self.limits.holds(stage.reference["tune"], result.tune)
            result.report = self.standalone_scorer(stage, report).score(guard.candidate.path, guard.candidate.spec)
        return guard.candidate

    def onnx_int8(self, stage: Stage, partner: Stage | None, work: Path) -> TargetResult:
        path = self.opts.out / f"{stage.source.stem}_int8.onnx"
        result = TargetResult("onnx-int8", path)

        def build() -> None:
            cands = OnnxCandidates(stage.fp32, stage.spec, stage.ranges, self.opts.method, work)
            chosen = self.guarded(stage, cands, result, partner)
            result.path = over_limits_path(path) if result.within is False else path
            spec = _with_calibration(stage.spec, "int8", stage.calibration, float_layers=chosen.float_layers,
                                     quantization={"format": "QDQ", "weights": "int8 per-channel symmetric",
                                                   "activations": "int8 symmetric",
                                                   "int8_layers": len(cands.units) - len(chosen.float_layers)})
            qdq = onnx.load(str(chosen.path))
            result.float_nodes = onnx_int8.float_layers(qdq)
            save_onnx_with_spec(qdq, spec, result.path)
            stage.chosen["onnx-int8"] = Candidate(result.path, spec, chosen.float_layers)
        return attempt(result, build)

    def trt_cache(self, stage: Stage) -> TargetResult:
        """The cache for implicit INT8 from the FP32 graph; inputs of layers kept in float get no scale,
        so TensorRT runs those layers in FP16/FP32 too."""
        path = self.opts.out / f"{stage.source.stem}_int8.calib"
        result = TargetResult("trt-cache", path)

        def build() -> None:
            chosen = stage.chosen.get("onnx-int8")
            float_layers = chosen.float_layers if chosen else []
            nodes = {n.name: n for n in stage.fp32.graph.node}
            skip = {i for name in float_layers for i in nodes[name].input[:1]}
            ranges = stage.ranges
            kept = type(ranges)(ranges.calibration_method, {k: v for k, v in ranges.data.items() if k not in skip})
            cache = trt_cache.write_cache(path, kept, self.opts.method, self.opts.trt_version)
            result.notes = (f"{len(cache.scales)} tensor scales, header TRT-{cache.version_tag}-{cache.algorithm} "
                            f"(build_engine.py retags it for the device's TensorRT); for {stage.fp32_path.name}")
        return attempt(result, build)

    def tflite(self, stage: Stage, partner: Stage | None, modes: list[str], work: Path) -> list[TargetResult]:
        """TFLite targets from one onnx2tf conversion of the FP32 compute graph (batch pinned to 1)."""
        from hagrid_edge.quantize.tflite_export import TFLiteConversion

        results = [TargetResult(f"tflite-{m}", self.opts.out / f"{stage.source.stem}_{m}.tflite") for m in modes]
        holder: dict[str, TFLiteConversion] = {}

        def convert() -> TFLiteConversion:
            if "conv" not in holder:
                src = save_onnx_with_spec(fix_batch(stage.fp32, 1), stage.spec, work / f"{stage.source.stem}_b1.onnx")
                log = self.opts.out / f"{stage.source.stem}.tflite.convert.log"
                holder["conv"] = TFLiteConversion(src, stage.spec, stage.inputs, work, log)
            return holder["conv"]

        for mode, result in zip(modes, results, strict=True):
            def build(mode: str = mode, result: TargetResult = result) -> None:
                conv = convert()
                # made from the FP32 artifact written beside it (the batch-1 copy is only the converter's input)
                source = {"source_sha256": sha256_file(stage.fp32_path), "source_file": stage.fp32_path.name}
                if mode == "fp16":
                    spec = conv.write(conv.float16, result.path, {**conv.provenance("fp16"), **source})
                    if self.opts.guard and partner is None:
                        result.report = self.standalone_scorer(stage, self.sets["report"]).score(result.path, spec)
                    return
                cands = conv.int8_candidates(method=self.opts.method)
                chosen = self.guarded(stage, cands, result, partner)
                result.board = board_cost.board_figures(chosen.path, conv.float16, cands.build().path)
                ratio = (result.board.get(board_cost.REFERENCE_CPU) or {}).get("x_fp32")
                if self.opts.max_board_ratio is not None and ratio is not None and ratio > self.opts.max_board_ratio:
                    result.within = False
                    result.notes = (f"Pi 5 instructions {ratio:.2f}x its FP32 form's, over --max-board-ratio "
                                    f"{self.opts.max_board_ratio:g}")
                if result.within is False:
                    result.path = over_limits_path(result.path)
                prov = conv.provenance("int8", len(stage.inputs), chosen.float_layers)
                guard = {"within_limits_on_tune": result.within, "board": result.board}
                spec = conv.write(chosen.path, result.path, {**prov, **source, "calibration": stage.calibration,
                                                             "guard": guard})
                stage.chosen["tflite-int8"] = Candidate(result.path, spec, chosen.float_layers)
            attempt(result, build)
        return results

    # ---- the whole pipeline ------------------------------------------------------------------------
    def pair(self, det: Stage, cls: Stage, target: str) -> PairResult:
        """The INT8 pair of one format against the FP32 pair, on the tune and the report photos."""
        d, c = det.chosen.get(target), cls.chosen.get(target)
        result = PairResult(target, d.path if d else None, c.path if c else None)
        if d is None or c is None:
            result.error = f"no {target} artifact for the " + ("detector" if d is None else "classifier")
            return result
        for name, photos in self.sets.items():
            reference = self.pair_reference(det, cls, photos)
            score = self.pair_scorer(det, d, cls, photos).score(c.path, c.spec)
            result.scores[name] = (reference, score)
        result.within = self.limits.holds(*result.scores["report"])
        return result


def calibrate(opts: Options) -> Report:
    unknown = sorted(set(opts.targets) - set(TARGETS))
    if unknown:
        raise HagridEdgeError(f"--targets: unknown target(s) {unknown} (known: {', '.join(TARGETS)})")
    if opts.method not in METHODS:
        raise HagridEdgeError(f"--method: {opts.method!r} is not one of {', '.join(METHODS)}")
    t_start = time.perf_counter()
    run = Calibration(opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    det = _stage(opts, opts.model, opts.spec_file, "--model")
    cls = None
    if opts.classifier is not None:
        if opts.classifier.resolve() == opts.model.resolve():
            raise HagridEdgeError(f"--classifier {opts.classifier}: the same file as --model")
        cls = _stage(opts, opts.classifier, opts.classifier_spec, "--classifier")
        _check_pair(det.spec, cls.spec, opts)
        run.classifier = cls
    if opts.guard:
        trained = any(trained_on(s.spec.provenance, opts.data) == "train" for s in [det, *([cls] if cls else [])])
        tune, report = photo_sets(opts.data, opts.eval_limit, trained=trained)
        run.sets = {"tune": tune, "report": report}
    stages = [(det, None)] + ([(cls, det)] if cls else [])
    out = Report(model=str(opts.model), classifier=str(opts.classifier) if cls else None, out=opts.out,
                 method=opts.method, max_drop=opts.max_drop, min_agreement=opts.min_agreement, max_drop50=opts.max_drop50,
                 photo_sets={k: v.describe() for k, v in run.sets.items()},
                 detector_guard=opts.detector_guard)
    with tempfile.TemporaryDirectory(prefix="hagrid-calibrate.") as tmp:
        for stage, partner in stages:
            work = Path(tmp) / stage.role
            work.mkdir()
            sr = StageReport(stage.role, str(stage.source), stage.fp32_path, stage.info, stage.calibration)
            out.stages.append(sr)
            if "onnx-int8" in opts.targets:
                sr.targets.append(run.onnx_int8(stage, partner, work))
            if "trt-cache" in opts.targets:
                sr.targets.append(run.trt_cache(stage))
            modes = [m for m in ("int8", "fp16") if f"tflite-{m}" in opts.targets]
            if modes:
                sr.targets += run.tflite(stage, partner, modes, work)
            if opts.guard and partner is None:
                run.standalone_scorer(stage, run.sets["report"])
                sr.reference = dict(stage.reference)
        if cls is not None and opts.guard:
            out.pairs = [run.pair(det, cls, t) for t in INT8_FORMATS if t in opts.targets]
            out.stages[1].reference = {name: run.pair_reference(det, cls, photos) for name, photos in run.sets.items()}
    out.seconds = round(time.perf_counter() - t_start, 2)
    out.write()
    return out
