"""INT8 QDQ ONNX: one calibration pass over the compute graph, then QDQ placement from those ranges.

Weights are quantized per channel and symmetric, activations symmetric int8 (zero point 0), the form
TensorRT's explicit quantization expects. The activation ranges of every float tensor are collected
once (``collect_ranges``) and reused by every later step: QDQ models with different layers kept in
float, and the TensorRT calibration cache.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from hagrid_edge.errors import HagridEdgeError, first_line
from hagrid_edge.quantize import range_choice
from hagrid_edge.quantize.choices import METHODS, PERCENTILES

# Per-channel QDQ DequantizeLinear needs opset 13; older graphs are converted first.
MIN_OPSET = 13
# Compute ops that get Q/DQ. Everything else (reshapes, concats, activations of the scores,
# box decoding, NMS) stays float; measured on the HaGRID hand detector, quantizing only Conv and
# Relu kept mAP where adding Add/Mul/Concat lost points.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers with weights
QUANTIZED_OPS = (*COMPUTE_OPS, "Relu")
PERCENTILE = PERCENTILES["percentile"]
HISTOGRAM_BINS = {"percentile": 2048, "entropy": 512}  # entropy's threshold search is quadratic in bins
CALIB_BATCH = 8


def _calibration_method(method: str):
    """onnxruntime's calibrator for ``method`` (every percentile method is its Percentile, at its own level;
    mse takes its histograms and chooses each tensor's level itself)."""
    from onnxruntime.quantization import CalibrationMethod

    if method in PERCENTILES or method == "mse":
        return CalibrationMethod.Percentile
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}[method]


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, name: str = "model") -> onnx.ModelProto:
    """``model`` at opset >= 13 (a converted copy when older)."""
    version = opset_of(model)
    if version >= MIN_OPSET:
        return model
    if version < 7:
        raise HagridEdgeError(f"{name}: opset {version} is too old to convert (need >= 7; INT8 needs {MIN_OPSET})")
    try:
        out = onnx.version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(out)
    except Exception as e:  # the converter raises plain RuntimeError/ValidationError with long text
        first = first_line(e)
        raise HagridEdgeError(f"{name}: cannot convert opset {version} to {MIN_OPSET} for per-channel INT8 "
                              f"({first})") from None
    return out


def check_supported_ops(model: onnx.ModelProto, name: str = "model") -> None:
    """Refuse ops ONNX Runtime cannot run (custom domains), naming them."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own exception types
        first = first_line(e)
        raise HagridEdgeError(f"{name}: unsupported graph for calibration ({first})") from None


def _batches(inputs: Sequence[np.ndarray], batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(inputs), batch):
        yield np.concatenate(inputs[i:i + batch], axis=0)


def _fixed_batch(model: onnx.ModelProto) -> bool:
    dim = model.graph.input[0].type.tensor_type.shape.dim
    return bool(dim) and dim[0].HasField("dim_value")


def _reader(input_name: str, batches: Sequence[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    return Reader()


def collect_ranges(model: onnx.ModelProto, input_name: str, inputs: Sequence[np.ndarray], method: str):
    """Activation ranges (ORT ``TensorsData``) of every float tensor of ``model``, symmetric, in one pass."""
    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.calibrate import TensorData

    if method not in METHODS:
        raise HagridEdgeError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    if not inputs:
        raise HagridEdgeError("no calibration inputs")
    calib_method = _calibration_method(method)
    options = {"symmetric": True}
    if method in PERCENTILES or method == "mse":
        options["num_bins"] = HISTOGRAM_BINS["percentile"]
        options["percentile"] = PERCENTILES.get(method, PERCENTILE)
    elif method in HISTOGRAM_BINS:
        options["num_bins"] = HISTOGRAM_BINS[method]
    batch = 1 if _fixed_batch(model) else CALIB_BATCH
    with tempfile.TemporaryDirectory(prefix="hagrid-calib.") as tmp:
        src = Path(tmp) / "model.onnx"
        onnx.save(model, str(src))
        calibrator = create_calibrator(src, None, str(Path(tmp) / "augmented.onnx"), calib_method,
                                       extra_options=options)
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress lines
            # One batch per collect_data call: ORT's histogram calibrators keep every intermediate output
            # of a call in memory and stack them (so batches of one call must be the same size);
            # ranges and histograms accumulate across calls.
            for x in _batches(inputs, batch):
                calibrator.collect_data(_reader(input_name, [x]))
            ranges = calibrator.compute_data()
    if method == "mse":
        for name, (hist, edges, *_) in calibrator.collector.histogram_dict.items():
            chosen = range_choice.from_abs_histogram(hist, edges)
            ranges[name] = TensorData(lowest=np.array(chosen.low, np.float32), highest=np.array(chosen.high, np.float32),
                                      hist=hist, hist_edges=edges)
    return ranges


def quantize_qdq(model: onnx.ModelProto, ranges, method: str, exclude: Sequence[str] = (),
                 only: Sequence[str] = ()) -> onnx.ModelProto:
    """The QDQ model from collected ``ranges``; nodes in ``exclude`` stay float (``only``: quantize just these)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    calib_method = _calibration_method(method)
    ranges = copy.copy(ranges)
    ranges.calibration_method = calib_method
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT warns about pre-processing on every call
    try:
        with tempfile.TemporaryDirectory(prefix="hagrid-qdq.") as tmp:
            cache, out = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
            save_tensors_data(ranges, cache)
            quantize_static(
                model, out, None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_quantize=list(only), nodes_to_exclude=list(exclude), calibrate_method=calib_method,
                calibration_cache_path=cache,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
            return float_head_outputs(onnx.load(str(out)), head_nodes(model))
    finally:
        logging.getLogger().setLevel(quiet)


def head_nodes(model: onnx.ModelProto) -> set[str]:
    """Compute nodes whose output reaches a graph output through no other quantized op (the heads)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    heads, todo, seen = set(), [o.name for o in model.graph.output], set()
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in COMPUTE_OPS:
            heads.add(node.name)
        elif node.op_type not in QUANTIZED_OPS:
            todo += [i for i in node.input if i]
    return heads


def float_head_outputs(qdq: onnx.ModelProto, heads: set[str]) -> onnx.ModelProto:
    """Remove the Q/DQ pair after each head, so logits and box regression leave the graph unrounded
    (the head still takes INT8 inputs and weights)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qdq.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in qdq.graph.output}
    drop: set[int] = set()
    for node in [n for n in qdq.graph.node if n.name in heads]:
        tensor = node.output[0]
        for q in [c for c in consumers.get(tensor, []) if c.op_type == "QuantizeLinear"]:
            dqs = consumers.get(q.output[0], [])
            if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
                continue
            for dq in dqs:
                if dq.output[0] in outputs:  # the head itself produces the graph output again
                    for c in consumers.get(tensor, []):
                        c.input[:] = [dq.output[0] if i == tensor else i for i in c.input]
                    node.output[0] = tensor = dq.output[0]
                else:
                    for c in consumers.get(dq.output[0], []):
                        c.input[:] = [tensor if i == dq.output[0] else i for i in c.input]
                drop.add(id(dq))
            drop.add(id(q))
    keep = [n for n in qdq.graph.node if id(n) not in drop]
    del qdq.graph.node[:]
    qdq.graph.node.extend(keep)
    used = {i for n in keep for i in n.input}
    inits = [t for t in qdq.graph.initializer if t.name in used]
    del qdq.graph.initializer[:]
    qdq.graph.initializer.extend(inits)
    onnx.checker.check_model(qdq)
    return qdq


def layer_units(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Compute node name -> that node plus the Relu(s) that consume only its output (one layer)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    units = {}
    for n in model.graph.node:
        if n.op_type in COMPUTE_OPS:
            after = consumers.get(n.output[0], [])
            units[n.name] = [n.name] + [c.name for c in after if c.op_type == "Relu" and len(after) == 1]
    return units


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes stable names (QDQ exclusion and reports address nodes by name)."""
    seen: set[str] = set()
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{k}"
        seen.add(node.name)
    return model


def float_layers(qdq: onnx.ModelProto) -> list[str]:
    """Compute nodes (Conv, Gemm, MatMul) of ``qdq`` whose weights are not INT8 (no DequantizeLinear)."""
    producers = {o: n for n in qdq.graph.node for o in n.output}
    return [n.name for n in qdq.graph.node if n.op_type in COMPUTE_OPS and len(n.input) > 1
            and getattr(producers.get(n.input[1]), "op_type", None) != "DequantizeLinear"]
