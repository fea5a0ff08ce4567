"""``calibrate``: one calibration pass over the HaGRID subsample, then every requested INT8/FP16 target.

Flow: resolve the model's spec -> cut decode + NMS out of the graph when they are inside -> opset >= 13
-> FP32 compute model written beside the artifacts -> calibration inputs through the spec's
preprocessing -> activation ranges collected once -> per target: QDQ ONNX (with the accuracy guard
and mixed precision), TensorRT cache, TFLite INT8 / FP16 (``hagrid_edge.quantize.tflite_export``).
A target that fails is recorded in the report with its error; the others still run.
"""

from __future__ import annotations

import importlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.quantize import calib_data, onnx_int8, trt_cache
from hagrid_edge.quantize.accuracy import Score, Scorer
from hagrid_edge.quantize.choices import (
    DEFAULT_MAX_DROP,
    DEFAULT_METHOD,
    DEFAULT_TRT_VERSION,
    METHODS,
    TARGETS,
)
from hagrid_edge.quantize.graph_cut import fix_batch, load_model, save_onnx_with_spec, split_detector
from hagrid_edge.quantize.report import Report, TargetResult
from hagrid_edge.quantize.sensitivity import layer_units, mixed_precision
from hagrid_edge.spec import ModelSpec, resolve_spec, sha256_file

TFLITE_MODULE = "hagrid_edge.quantize.tflite_export"
CHECKPOINTS = (".pt", ".pth")


@dataclass
class Options:
    model: Path
    data: Path
    out: Path
    targets: tuple[str, ...] = TARGETS
    method: str = DEFAULT_METHOD
    max_drop: float = DEFAULT_MAX_DROP
    limit: int | None = None
    spec_file: Path | None = None
    trt_version: str = DEFAULT_TRT_VERSION
    eval_limit: int | None = None
    threads: int | None = None
    guard: bool = True


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _exported(checkpoint: Path, tmp: Path) -> Path:
    """A training checkpoint exported to FP32 ONNX by the project's exporter (``hagrid-edge export``)."""
    from hagrid_edge.export import export_onnx

    if not checkpoint.is_file():
        raise HagridEdgeError(f"--model {checkpoint}: no such checkpoint")
    out = tmp / f"{checkpoint.stem}.onnx"
    export_onnx(checkpoint, out)
    return out


def prepare_fp32(opts: Options) -> tuple[onnx.ModelProto, ModelSpec, dict]:
    """The FP32 compute graph (decode + NMS cut out, opset >= 13, nodes named) and its spec."""
    suffix = opts.model.suffix.lower()
    if suffix in CHECKPOINTS:
        with tempfile.TemporaryDirectory(prefix="hagrid-export.") as tmp:
            source = _exported(opts.model, Path(tmp))
            model, spec = load_model(source), resolve_spec(source)
    elif suffix == ".onnx":
        spec = resolve_spec(opts.model, opts.spec_file)
        model = load_model(opts.model)
    else:
        raise HagridEdgeError(f"--model {opts.model}: calibrate takes an FP32 .onnx or a training checkpoint "
                              f"({', '.join(CHECKPOINTS)})")
    info: dict = {"source": str(opts.model), "source_sha256": sha256_file(opts.model),
                  "source_opset": onnx_int8.opset_of(model), "graph_cut": False}
    if spec.outputs == "nms":
        model, spec = split_detector(model, spec)
        info["graph_cut"] = True
    model = onnx_int8.name_nodes(onnx_int8.upgrade_opset(model, str(opts.model)))
    onnx_int8.check_supported_ops(model, str(opts.model))
    info["opset"] = onnx_int8.opset_of(model)
    spec = ModelSpec.from_dict({**spec.to_dict(), "provenance": {
        **spec.provenance, "source_sha256": info["source_sha256"], "precision": "fp32"}})
    return model, spec, info


def _with_calibration(spec: ModelSpec, precision: str, calibration: dict, **extra) -> ModelSpec:
    return ModelSpec.from_dict({**spec.to_dict(), "provenance": {
        **spec.provenance, "precision": precision, "calibration": calibration, **extra}})


def _onnx_int8(opts: Options, fp32: onnx.ModelProto, spec: ModelSpec, ranges, inputs: list[np.ndarray],
               scorer: Scorer | None, reference: Score | None, calibration: dict, path: Path) -> TargetResult:
    t0 = time.perf_counter()
    qdq = onnx_int8.quantize_qdq(fp32, ranges, opts.method)
    result = TargetResult("onnx-int8", path)
    if scorer is not None and reference is not None:
        first = scorer.score_model(qdq)
        guard = mixed_precision(fp32, ranges, opts.method, spec.input_name, inputs, scorer, reference,
                                (qdq, first), opts.max_drop)
        qdq, result.score, result.within = guard.model, guard.score, guard.within
        result.float_layers, result.trials = guard.float_layers, guard.trials
        result.sensitivity = guard.sensitivity[:10]
    units = layer_units(fp32)
    result.float_nodes = onnx_int8.float_layers(qdq)
    out_spec = _with_calibration(spec, "int8", calibration, float_layers=result.float_layers,
                                 quantization={"format": "QDQ", "weights": "int8 per-channel symmetric",
                                               "activations": "int8 symmetric", "int8_layers":
                                               len(units) - len(result.float_layers)})
    save_onnx_with_spec(qdq, out_spec, path)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def _trt_cache(opts: Options, fp32: onnx.ModelProto, ranges, float_layers: list[str], path: Path,
               fp32_path: Path) -> TargetResult:
    """The cache for implicit INT8 from the FP32 graph; inputs of layers kept in float get no scale,
    so TensorRT runs those layers in FP16/FP32 too."""
    t0 = time.perf_counter()
    nodes = {n.name: n for n in fp32.graph.node}
    skip = {i for name in float_layers for i in nodes[name].input[:1]}
    kept = type(ranges)(ranges.calibration_method, {k: v for k, v in ranges.data.items() if k not in skip})
    cache = trt_cache.write_cache(path, kept, opts.method, opts.trt_version)
    result = TargetResult("trt-cache", path, seconds=round(time.perf_counter() - t0, 2))
    result.notes = (f"{len(cache.scales)} tensor scales, header TRT-{cache.version_tag}-{cache.algorithm} "
                    f"(build_engine.py retags it for the device's TensorRT); for {fp32_path.name}")
    return result


def _tflite(opts: Options, mode: str, fp32: onnx.ModelProto, spec: ModelSpec, inputs: list[np.ndarray],
            path: Path, scorer: Scorer | None, reference: Score | None) -> TargetResult:
    """A TFLite target from the FP32 compute graph with its batch pinned to 1 (what a TFLite file runs)."""
    target = f"tflite-{mode}"
    t0 = time.perf_counter()
    result = TargetResult(target, path)
    try:
        module = importlib.import_module(TFLITE_MODULE)
        with tempfile.TemporaryDirectory(prefix="hagrid-tflite-src.") as tmp:
            src = save_onnx_with_spec(fix_batch(fp32, 1), spec, Path(tmp) / f"{opts.model.stem}_fp32.onnx")
            out_spec = module.export_tflite(src, spec, inputs, path, mode)
        if scorer is not None and reference is not None:
            result.score = scorer.score(path, out_spec)
            result.within = reference.value - result.score.value <= opts.max_drop
    except Exception as e:  # a failed converter must not take the other targets down
        result.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def calibrate(opts: Options) -> Report:
    unknown = sorted(set(opts.targets) - set(TARGETS))
    if unknown:
        raise HagridEdgeError(f"--targets: unknown target(s) {unknown} (known: {', '.join(TARGETS)})")
    if opts.method not in METHODS:
        raise HagridEdgeError(f"--method: {opts.method!r} is not one of {', '.join(METHODS)}")
    t_start = time.perf_counter()
    fp32, spec, info = prepare_fp32(opts)
    inputs, stats = calib_data.calibration_batches(opts.data, spec, opts.limit)
    t0 = time.perf_counter()
    ranges = onnx_int8.collect_ranges(fp32, spec.input_name, inputs, opts.method)
    calib_seconds = round(time.perf_counter() - t0, 2)
    calibration = {"method": opts.method, "data": str(opts.data), "split": calib_data.SPLIT,
                   "images": stats.used, "skipped": stats.skipped, "inputs": stats.inputs,
                   "tensors": len(ranges.data)}
    stem = opts.model.stem
    opts.out.mkdir(parents=True, exist_ok=True)
    fp32_path = opts.out / f"{stem}_fp32.onnx"
    save_onnx_with_spec(fp32, spec, fp32_path)
    scorer = reference = None
    if opts.guard:
        scorer = Scorer(opts.data, spec, limit=opts.eval_limit, threads=opts.threads)
        reference = scorer.score(fp32_path)
    report = Report(model=str(opts.model), out=opts.out, method=opts.method, max_drop=opts.max_drop,
                    calibration=calibration, skipped_files=stats.skipped_files, graph=info,
                    reference=reference, fp32_path=fp32_path, calib_seconds=calib_seconds)
    float_layers: list[str] = []
    if "onnx-int8" in opts.targets:
        res = _onnx_int8(opts, fp32, spec, ranges, inputs, scorer, reference, calibration,
                         opts.out / f"{stem}_int8.onnx")
        float_layers = res.float_layers
        report.targets.append(res)
    if "trt-cache" in opts.targets:
        report.targets.append(_trt_cache(opts, fp32, ranges, float_layers, opts.out / f"{stem}_int8.calib",
                                         fp32_path))
    for mode in ("int8", "fp16"):
        if f"tflite-{mode}" in opts.targets:
            report.targets.append(_tflite(opts, mode, fp32, _with_calibration(spec, mode, calibration),
                                          inputs, opts.out / f"{stem}_{mode}.tflite", scorer, reference))
    for res in report.targets:
        res.size = _size(res.path)
    report.seconds = round(time.perf_counter() - t_start, 2)
    report.write()
    return report
