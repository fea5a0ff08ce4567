"""One bench row per artifact (or detector + classifier pair): accuracy, latency, size, memory.

Every row is measured in its own process (``memory.run_isolated``) through the deployed code path
(``load_pipeline`` / ``open_backend``) and scored by ``hagrid_edge.evaluate``. A row whose artifact
fails to load or run carries the error instead of figures. INT8 rows are compared with the FP32
row they were made from, found through the spec's provenance (``source_sha256``) or ``--reference``
(a single artifact's or a whole pair's): the drop, latency ratios and, with ``SuiteConfig.agreement``,
agreement with the FP32 row's own detections.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hagrid_edge.benchmarks.formats import FP32, format_of, is_int8, precision_of, source_sha256
from hagrid_edge.benchmarks.latency import LatencyConfig, time_calls
from hagrid_edge.benchmarks.memory import MIB, current_rss_bytes, peak_rss_bytes, run_isolated
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import resolve_model

PAIR_SEPARATOR = "+"
ACCURACY_TASKS = ("gestures", "hands")
# Per-task metrics the drop against FP32 and the gate look at.
TASK_METRICS = {"gestures": ("mAP50_95", "mAP50"), "hands": ("mAP50_95", "mAP50"), "classify": ("f1",)}


@dataclass(frozen=True)
class Target:
    """What one row benchmarks: a model, optionally with a crop classifier (two-stage)."""

    id: str
    model: str
    classifier: str | None = None
    latency_only: bool = False

    @property
    def paths(self) -> list[str]:
        return [self.model] + ([self.classifier] if self.classifier else [])


@dataclass(frozen=True)
class SuiteConfig:
    data: str
    split: str
    tasks: tuple[str, ...] = ACCURACY_TASKS
    limit: int | None = None
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    frames: int = 8  # real images cycled through in the end-to-end timing
    timeout_s: float = 900.0
    held_apart: bool = False  # score on calibrate's report half of val's users instead of the whole split
    bootstrap: int = 0  # resamples of the photos' users for 95 % intervals of each mAP (0: none)
    agreement: bool = False  # keep detections so INT8 rows get agreement with their FP32 row


def bench_samples(config: SuiteConfig) -> list[Any]:
    """The photos every row is scored on: the split, or with ``held_apart`` the half of val's users that
    ``calibrate`` reports on for a model trained here (no calibration, tuning or training choice saw them)."""
    from hagrid_edge.data.annotations import load_split
    from hagrid_edge.quantize.photo_sets import photo_sets

    samples = photo_sets(config.data, trained=True)[1].samples if config.held_apart else \
        load_split(config.data, config.split)
    return samples[: config.limit or None]


def split_pair(arg: str) -> tuple[str, str | None]:
    """``DET+CLS`` -> (DET, CLS); a path that exists as given is never split."""
    if PAIR_SEPARATOR not in arg or Path(arg).exists():
        return arg, None
    model, _, classifier = arg.rpartition(PAIR_SEPARATOR)
    return model, classifier


def make_targets(models: list[str], latency_only: list[str]) -> list[Target]:
    """Rows in command-line order, named by file names (with the parent folder where names clash)."""
    pairs = [split_pair(m) for m in models]  # each part a path or a shipped model's name
    entries = [(resolve_model(d), c and resolve_model(c), False) for d, c in pairs]
    entries += [(resolve_model(p), None, True) for p in latency_only]

    paths = {str(Path(p).resolve()) for m, c, _ in entries for p in (m, c) if p}
    depth, deepest = 1, max((len(Path(p).parts) for p in paths), default=1)
    # Deepen names until no name stands for two different files (fp32/det.onnx vs int8/det.onnx).
    while depth < deepest and len({"/".join(Path(p).parts[-depth:]) for p in paths}) < len(paths):
        depth += 1
    names = [PAIR_SEPARATOR.join("/".join(Path(p).parts[-depth:]) for p in (m, c) if p) for m, c, _ in entries]
    return [Target(n, m, c, lo) for n, (m, c, lo) in zip(names, entries)]  # noqa: B905


# ---- inside the row's own process ---------------------------------------------------------------
def raw_spec(path: Path) -> Any:
    """A spec that only describes the input tensor, for feeding a spec-less model in latency-only rows.

    Its outputs are not interpreted (one output is named so the backend can check the file);
    normalisation maps pixels to [0, 1], which is irrelevant to latency.
    """
    from hagrid_edge.spec import ModelSpec, Quant

    fmt = format_of(path)
    if fmt.signature is None:
        raise HagridEdgeError(f"{path}: a {fmt.name} without a spec cannot be benchmarked for latency only")
    sig = fmt.signature(path)
    if len(sig.inputs) != 1 or len(sig.inputs[0].shape) != 4:
        raise HagridEdgeError(f"{path}: latency-only rows need one 4-D image input, the model has "
                              f"{[(t.name, t.shape) for t in sig.inputs]}")
    inp = sig.inputs[0]
    nhwc = inp.shape[3] in (1, 3) and inp.shape[1] not in (1, 3)
    size = inp.shape[1:3] if nhwc else inp.shape[2:4]
    quant = Quant(inp.quant[0], inp.quant[1], inp.dtype) if inp.quant and inp.dtype in ("int8", "uint8") else None
    return ModelSpec(task="classifier", classes=["output"], input_size=size, outputs="logits",
                     output_names={"logits": sig.outputs[0].name}, input_name=inp.name,
                     layout="NHWC" if nhwc else "NCHW", resize="stretch", input_dtype=inp.dtype,
                     input_quant=quant, provenance={"note": "latency-only: input description only"})


def _artifact_facts(path: Path, spec: Any) -> dict[str, Any]:
    from hagrid_edge.spec import sha256_file

    fmt = format_of(path)
    return {"path": str(path), "file": path.name, "format": fmt.name, "runtime": fmt.runtime,
            "precision": precision_of(path, spec.provenance), "size_bytes": path.stat().st_size,
            "sha256": sha256_file(path), "source_sha256": source_sha256(spec.provenance)}


def _stage_medians(times: list[Any]) -> dict[str, float]:
    return {stage: round(statistics.median(getattr(t, stage) for t in times) * 1000.0, 3)
            for stage in ("pre", "infer", "post")}


def _detector_tasks(labels: list[str], wanted: tuple[str, ...]) -> list[str]:
    from hagrid_edge.labels import GESTURES

    applicable = ["gestures"] if set(labels) & set(GESTURES) else []
    return [t for t in wanted if t in applicable + ["hands"]]


@dataclass
class _Measured:
    kind: str
    specs: list[Any]
    infer: Any
    end_to_end: Any = None
    stage_times: list[Any] = field(default_factory=list)
    peak_rss: int = 0
    accuracy: dict[str, Any] = field(default_factory=dict)
    backends: list[str] = field(default_factory=list)  # runtime adapters' names, e.g. onnxruntime-cpu
    detections: dict[str, Any] = field(default_factory=dict)  # with SuiteConfig.agreement: for attach_agreement


@dataclass
class _Inputs:
    samples: list[Any]
    frames: list[Any]  # decoded real images for the timing loops
    boxes: list[Any]  # one annotated hand per frame (xyxy pixels)
    config: SuiteConfig

    def frame(self, i: int) -> int:
        return i % len(self.frames)


def _latency_only(path: str, inp: _Inputs) -> _Measured:
    from hagrid_edge.deploy.common.backend import open_backend
    from hagrid_edge.processing import preprocess

    spec = raw_spec(Path(path))
    backend = open_backend(path, spec=spec, threads=inp.config.latency.threads)
    x, _ = preprocess(inp.frames[0], spec)
    infer = time_calls(lambda i: backend.infer(x), inp.config.latency)
    return _Measured("latency-only", [spec], infer, peak_rss=peak_rss_bytes(), backends=[backend.name])


def _classifier(path: str, inp: _Inputs) -> _Measured:
    from hagrid_edge.deploy.common.backend import open_backend
    from hagrid_edge.evaluate import evaluate_classifier
    from hagrid_edge.pipeline import CropClassifier, FrameClassifier
    from hagrid_edge.processing import crop_inputs, preprocess

    backend = open_backend(path, threads=inp.config.latency.threads)
    spec = backend.spec
    clf = CropClassifier(backend) if spec.crop else FrameClassifier(backend)
    x = crop_inputs(inp.frames[0], inp.boxes[0], spec) if spec.crop else preprocess(inp.frames[0], spec)[0]
    m = _Measured("classifier", [spec], time_calls(lambda i: backend.infer(x), inp.config.latency),
                  backends=[backend.name])

    def run(i: int) -> None:
        j = inp.frame(i)
        if isinstance(clf, CropClassifier):
            clf(inp.frames[j], inp.boxes[j])
        else:
            clf(inp.frames[j])
        m.stage_times.append(clf.last_times)

    m.end_to_end = time_calls(run, inp.config.latency)
    m.peak_rss = peak_rss_bytes()
    m.accuracy["classify"] = evaluate_classifier(clf, inp.samples, progress=False)
    return m


def _detector(target: Target, inp: _Inputs) -> _Measured:
    from hagrid_edge.evaluate import EVAL_SCORE_THRESHOLD, run_detector
    from hagrid_edge.pipeline import TwoStage, load_pipeline
    from hagrid_edge.processing import crop_inputs, preprocess

    pipe = load_pipeline(target.model, target.classifier, threads=inp.config.latency.threads)
    two_stage = isinstance(pipe, TwoStage)
    detector = pipe.detector if two_stage else pipe
    x, _ = preprocess(inp.frames[0], detector.spec)
    if two_stage:
        hands = detector(inp.frames[0]).boxes[:1]
        crop = crop_inputs(inp.frames[0], hands if len(hands) else inp.boxes[0], pipe.classifier.spec)

        def infer(i: int) -> None:  # batch 1: the detector, then the classifier on one hand
            detector.backend.infer(x)
            pipe.classifier.backend.infer(crop)
    else:
        def infer(i: int) -> None:
            detector.backend.infer(x)

    specs = [detector.spec] + ([pipe.classifier.spec] if two_stage else [])
    m = _Measured("two-stage" if two_stage else "detector", specs, time_calls(infer, inp.config.latency),
                  backends=[detector.backend.name] + ([pipe.classifier.backend.name] if two_stage else []))

    def run(i: int) -> None:
        pipe(inp.frames[inp.frame(i)])
        m.stage_times.append(pipe.last_times)

    m.end_to_end = time_calls(run, inp.config.latency)
    m.peak_rss = peak_rss_bytes()
    labels = pipe.classifier.spec.labels if two_stage else detector.spec.labels
    tasks = _detector_tasks(labels, inp.config.tasks)
    if inp.config.agreement:  # at the operating threshold (the spec's): the truth INT8 rows are held to
        detector.score_threshold = None
        m.detections["operating"] = run_detector(pipe, inp.samples, progress=False)[0]
    detector.score_threshold = EVAL_SCORE_THRESHOLD  # score as hagrid-edge eval does
    dets, sizes = run_detector(pipe, inp.samples, progress=False) if tasks else ([], [])
    for task in tasks:
        m.accuracy[task] = _scored(inp, dets, sizes, task)
    if inp.config.agreement:
        m.detections.update(evaluation=dets, sizes=sizes)
    return m


def _scored(inp: _Inputs, dets: list[Any], sizes: list[tuple[int, int]], task: str) -> dict[str, Any]:
    """COCO mAP of one task (as ``hagrid-edge eval``), with 95 % user-bootstrap intervals when asked."""
    from hagrid_edge.bootstrap import bootstrap_map
    from hagrid_edge.evaluate import score_detections

    result = {"task": task, "images": len(inp.samples), **score_detections(inp.samples, sizes, dets, task)}
    if inp.config.bootstrap:
        boot = bootstrap_map(inp.samples, sizes, [dets], task, inp.config.bootstrap)
        result["interval"] = boot["intervals"][0]
        result["bootstrap"] = {k: boot[k] for k in ("unit", "groups", "resamples", "confidence")}
    return result


def measure(target: Target, config: SuiteConfig) -> dict[str, Any]:
    """Benchmark one target (runs in the row's own process). Raises on any failure."""
    import cv2

    from hagrid_edge.images import read_rgb
    from hagrid_edge.spec import resolve_spec

    cv2.setNumThreads(config.latency.threads)
    for path in target.paths:
        format_of(path)  # an unknown suffix fails before anything is loaded
        if not Path(path).is_file():
            raise HagridEdgeError(f"{path}: no such model file")
    samples = bench_samples(config)
    frames = [read_rgb(s.image_path) for s in samples[: config.frames]]
    boxes = [s.boxes_xyxy(f.shape[1], f.shape[0])[:1] for s, f in zip(samples, frames)]  # noqa: B905
    inp = _Inputs(samples, frames, boxes, config)
    rss_before = current_rss_bytes()
    if target.latency_only:
        m = _latency_only(target.model, inp)
    elif target.classifier is None and resolve_spec(target.model).task == "classifier":
        m = _classifier(target.model, inp)
    else:
        m = _detector(target, inp)
    return {
        "kind": m.kind,
        "artifacts": [_artifact_facts(Path(p), s) for p, s in zip(target.paths, m.specs)],  # noqa: B905
        "images": len(samples),
        "accuracy": {task: {k: v for k, v in result.items() if k not in ("task", "seconds")}
                     for task, result in m.accuracy.items()},
        "latency": {"infer": m.infer.to_dict(), "end_to_end": m.end_to_end.to_dict() if m.end_to_end else None,
                    "stages_median_ms": _stage_medians(m.stage_times) if m.stage_times else None,
                    "threads": config.latency.threads, "batch": 1, "backends": m.backends},
        "memory": {"peak_rss_mb": round(m.peak_rss / MIB, 1),
                   "model_rss_mb": round(max(m.peak_rss - rss_before, 0) / MIB, 1)},
        **({"detections": m.detections} if m.detections else {}),
    }


# ---- in the parent ------------------------------------------------------------------------------
def _precision(artifacts: list[dict[str, Any]]) -> str:
    values = list(dict.fromkeys(a["precision"] for a in artifacts))
    return values[0] if len(values) == 1 else "/".join(a["precision"] for a in artifacts)


def _row(target: Target, outcome: tuple[str, Any]) -> dict[str, Any]:
    status, value = outcome
    row: dict[str, Any] = {"id": target.id, "model": target.model, "classifier": target.classifier}
    if status != "ok":
        sizes = [Path(p).stat().st_size for p in target.paths if Path(p).is_file()]
        return {**row, "kind": "latency-only" if target.latency_only else None, "error": value,
                "size_mb": round(sum(sizes) / 1e6, 3) if sizes else None}
    arts = value["artifacts"]
    return {**row, **value, "error": None, "format": "+".join(dict.fromkeys(a["format"] for a in arts)),
            "precision": _precision(arts), "size_mb": round(sum(a["size_bytes"] for a in arts) / 1e6, 3)}


def _source_candidates(row: dict[str, Any], artifacts: list[dict[str, Any]],
                       references: dict[tuple[str, ...], list[tuple[str, ...]]]) -> list[tuple[str, ...]]:
    """Component sha256 tuples this row's FP32 reference may have, best first.

    First the references given for the whole row (``--reference``, in the order given: a pair's FP32
    pair on the host, its FP16-weight TFLite pair on an emulated Pi); then the FP32 sibling of each
    component: an FP32 artifact made from the same source by the same tool (a quantizer's FP32 export
    of the graph it quantized, with identical post-processing); then the recorded source itself (a
    single artifact's ``--reference`` or the spec's ``source_sha256``).
    """
    def source(a: dict[str, Any]) -> str:
        given = references.get((a["sha256"],))
        return given[0][0] if given else a["source_sha256"] or a["sha256"]

    def sibling(a: dict[str, Any]) -> str:
        if a["precision"] == FP32:
            return source(a)
        twins = [b["sha256"] for b in artifacts if b["precision"] == FP32 and b["sha256"] != a["sha256"]
                 and b["source_sha256"] and b["source_sha256"] == source(a)]
        return twins[0] if twins else source(a)

    own = tuple(a["sha256"] for a in row["artifacts"])
    return list(dict.fromkeys([*references.get(own, []), tuple(sibling(a) for a in row["artifacts"]),
                               tuple(source(a) for a in row["artifacts"])]))


def _ratio(row: dict[str, Any], ref: dict[str, Any], part: str, stat: str) -> float | None:
    a, b = row["latency"].get(part), ref["latency"].get(part)
    return round(a[stat] / b[stat], 3) if a and b and b[stat] > 0 else None


def attach_references(rows: list[dict[str, Any]], references: dict[tuple[str, ...], list[tuple[str, ...]]]) -> None:
    """Give every row made from another benchmarked row (INT8 from FP32) its drop and latency ratios.

    ``references`` maps a row's artifact sha256s (one, or a pair's two) to its sources' (``--reference``);
    otherwise the spec's provenance says where each artifact came from. Latency ratios use both the medians
    and the minima (the minimum is the figure least disturbed by other load on the machine).
    """
    ok = [r for r in rows if not r["error"]]
    by_shas = {tuple(a["sha256"] for a in r["artifacts"]): r for r in ok}
    artifacts = [a for r in ok for a in r["artifacts"]]
    for row in rows:
        row["reference"], row["drop"], row["latency_ratio"] = None, None, None
        if row["error"]:
            continue
        own = tuple(a["sha256"] for a in row["artifacts"])
        candidates = [c for c in _source_candidates(row, artifacts, references) if c != own]
        ref = next((by_shas[c] for c in candidates if c in by_shas), None)
        if ref is None:
            if candidates and any(a["precision"] != FP32 for a in row["artifacts"]):  # an FP32 row needs none
                row["reference_missing"] = "the FP32 source was not benchmarked in this run"
            continue
        row["reference"] = ref["id"]
        row["drop"] = {task: {m: round(ref["accuracy"][task][m] - row["accuracy"][task][m], 2)
                              for m in TASK_METRICS[task]}
                       for task in row["accuracy"] if task in ref["accuracy"]}
        ratios = {f"{part}{suffix}": _ratio(row, ref, part, stat) for part in ("infer", "end_to_end")
                  for suffix, stat in (("", "median_ms"), ("_min", "min_ms"))}
        row["latency_ratio"] = {k: v for k, v in ratios.items() if v is not None}


def attach_agreement(rows: list[dict[str, Any]], samples: list[Any], bootstrap: int = 0) -> None:
    """Rows with a reference get agreement per task: COCO mAP of their detections (at the evaluation threshold)
    against the reference row's own detections at its operating threshold (``hagrid_edge.agreement``);
    with ``bootstrap`` resamples, also the paired 95 % interval of their change against the reference (the
    row minus its reference on the same draws of users). The rows' detections (``SuiteConfig.agreement``)
    are dropped afterwards: the report keeps figures only."""
    from hagrid_edge.agreement import as_samples, detection_agreement
    from hagrid_edge.bootstrap import bootstrap_map

    by_id = {r["id"]: r for r in rows}
    for row in rows:
        ref = by_id.get(row.get("reference") or "")
        if ref is None or "detections" not in row or "detections" not in ref:
            continue
        mine, theirs = row["detections"], ref["detections"]
        truth = as_samples(samples, theirs["operating"], theirs["sizes"], 0.0)
        tasks = [t for t in row["accuracy"] if t in ref["accuracy"] and t != "classify"]
        row["agreement"] = {t: {m: detection_agreement(truth, mine["evaluation"], mine["sizes"], t)[m]
                                for m in TASK_METRICS[t]} for t in tasks}
        if bootstrap:
            row["change_interval"] = {t: bootstrap_map(samples, mine["sizes"], [mine["evaluation"],
                                                       theirs["evaluation"]], t, bootstrap)["difference"]
                                      for t in tasks}
    for row in rows:
        row.pop("detections", None)


def run_suite(targets: list[Target], config: SuiteConfig, references: dict[tuple[str, ...], list[tuple[str, ...]]],
              progress: Any = None) -> list[dict[str, Any]]:
    """Measure every target in its own process, in order; then link INT8 rows to their FP32 rows."""
    rows = []
    for target in targets:
        if progress:
            progress(f"bench: {target.id} ...")
        rows.append(_row(target, run_isolated(measure, (target, config), config.timeout_s)))
        if progress:
            r = rows[-1]
            progress(f"bench: {target.id}: " + (f"ERROR {r['error']}" if r["error"] else
                                                f"{r['latency']['infer']['median_ms']:.2f} ms infer"))
    attach_references(rows, references)
    attach_agreement(rows, bench_samples(config) if config.agreement else [], config.bootstrap)
    return rows


def int8_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r["error"] and any(is_int8(a["precision"]) for a in r["artifacts"])]
