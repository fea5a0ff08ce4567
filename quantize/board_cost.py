"""What a TFLite artifact costs on a Raspberry Pi: guest instructions per inference, from a per-op model.

An op's work is what XNNPACK's kernels do for it: multiply-accumulates of convolutions (full and
depthwise) and fully connected layers, in float or in int8, and the elements (and ops) that convert
tensors between int8 and float where a float part meets an int8 one. A CPU's coefficients (instructions
per unit of work) are fitted by non-negative least squares to the infer instructions that ``hagrid-edge
bench --emulate`` counts under qemu with that CPU pinned, over INT8 candidates with different units in
float (``benchmarks/bench_calibration_cost.py`` counts, refits and checks them). Constant ops (the
FP16-weight form's weight dequantization) run once when XNNPACK loads the model and are left out. Like
the counts, it is a proxy for the work, not a latency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# Multiply-accumulates in float and in int8, and the elements and ops converting between the two. Finer
# features (1x1 / kxk / depthwise, pads, adds, concatenations) fitted no better on held-out candidates:
# within one model their totals barely vary, so their coefficients are not identifiable.
FEATURES = ("mac_f", "mac_q", "convert", "convert_ops")
# Instructions per unit of work, per emulated CPU (deploy/rpi/emulate.py's profiles; infer instructions
# per frame, median of 2 val frames after a warm-up, one thread), fitted by benchmarks/bench_calibration_cost.py
# --refit on 55 counted TFLite files: 38 of the one-stage gesture detector (all-float, all-int8, 36 random
# float/int8 mixes) and 17 of the authors' hand detector (the same, 15 mixes, and the shipped
# hand_detector_int8.tflite). Each file checked with the coefficients fitted on the others: Pi 5 within
# 13.8 % (rms 8.0 %; the all-float and all-int8 forms within 0.6 %), Pi 4 within 10.0 % (rms 4.3 %).
# A Pi 4 does an int8 MAC for the instructions of a float one (no dot product); a Pi 5 for half.
COEFFICIENTS: dict[str, dict[str, float]] = {
    "pi5": {"mac_f": 0.4688, "mac_q": 0.2244, "convert": 3.03, "convert_ops": 51650.0},
    "pi4": {"mac_f": 0.4794, "mac_q": 0.4774, "convert": 3.075, "convert_ops": 123300.0},
}
REFERENCE_CPU = "pi5"  # the board the guard minimises

_TYPE_INT8, _TYPE_UINT8, _TYPE_INT16 = 9, 3, 7
_MAC_OPS = ("CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D")
_CONVERT_OPS = ("QUANTIZE", "DEQUANTIZE")


def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _op_name(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return _op_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "")


def _work(model, graph, op, name: str) -> tuple[str, float] | None:
    """(feature family, amount) of one op; None for a constant op (folded when the model loads) and for an
    op outside the features."""
    tensors = graph.tensors

    def constant(t: int) -> bool:
        data = model.buffers[tensors[t].buffer].data
        return data is not None and len(data) > 0

    live = [t for t in op.inputs if t >= 0 and not constant(t)]
    if not live:
        return None
    out = tensors[op.outputs[0]]
    elements = float(np.prod(out.shape))
    if name in _CONVERT_OPS:
        return "convert", elements
    if name in _MAC_OPS:
        weights = list(tensors[op.inputs[1]].shape)
        per_output = np.prod(weights[1:3] if name == "DEPTHWISE_CONV_2D" else weights[1:])
        return "mac", elements * float(per_output)
    return None  # pads, adds, concatenations, reshapes: a small share, folded into the coefficients


def _precision(graph, op) -> str:
    t = graph.tensors[op.outputs[0]].type
    return "q" if t in (_TYPE_INT8, _TYPE_UINT8, _TYPE_INT16) else "f"


def op_features(tflite: Path) -> dict[str, dict[str, float]]:
    """Each op's scope -> its work by feature (``FEATURES``), constant ops left out."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(Path(tflite))
    graph = model.subgraphs[0]
    out: dict[str, dict[str, float]] = {}
    for op in graph.operators:
        name = _op_name(model, op)
        work = _work(model, graph, op, name)
        if work is None:
            continue
        family, amount = work
        scope = fb.get_op_scope(op, graph.tensors)
        if family == "convert":
            out[scope] = {"convert": amount, "convert_ops": 1.0}
        else:
            out[scope] = {f"{family}_{_precision(graph, op)}": amount}
    return out


def features(tflite: Path) -> dict[str, float]:
    """The model's work summed over its ops, by feature."""
    total = dict.fromkeys(FEATURES, 0.0)
    for work in op_features(tflite).values():
        for k, v in work.items():
            total[k] += v
    return total


def instructions(tflite: Path, cpu: str = REFERENCE_CPU) -> float | None:
    """Predicted guest instructions of one inference on ``cpu`` (None: no coefficients for it)."""
    coef = COEFFICIENTS.get(cpu)
    if coef is None:
        return None
    f = features(tflite)
    return float(sum(coef[k] * f[k] for k in FEATURES))


def unit_costs(float_tflite: Path, units: Mapping[str, Sequence[str]], cpu: str = REFERENCE_CPU
               ) -> dict[str, float] | None:
    """Instructions one inference gains when each unit stays float in an otherwise int8 model: its ops in
    float instead of int8, plus converting its input and output between int8 and float (``units``: unit ->
    its op scopes in ``float_tflite``, the float model the candidates are made from)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    coef = COEFFICIENTS.get(cpu)
    if coef is None:
        return None
    model = fb.read_model(Path(float_tflite))
    graph = model.subgraphs[0]
    by_scope = {fb.get_op_scope(op, graph.tensors): op for op in graph.operators}
    produced = {t for op in graph.operators for t in op.outputs}
    costs: dict[str, float] = {}
    for unit, scopes in units.items():
        extra, outputs = 0.0, set()
        for scope in scopes:
            op = by_scope[scope]
            work = _work(model, graph, op, _op_name(model, op))
            if work is not None and work[0] == "mac":
                family, amount = work
                extra += amount * (coef[f"{family}_f"] - coef[f"{family}_q"])
            outputs |= set(op.outputs)
        first, last = by_scope[scopes[0]], by_scope[scopes[-1]]
        boundary = [t for t in first.inputs if t in produced and t not in outputs] + list(last.outputs[:1])
        extra += coef["convert"] * sum(float(np.prod(graph.tensors[t].shape)) for t in boundary)
        extra += coef["convert_ops"] * len(boundary)
        costs[unit] = extra
    return costs


def _nnls(a: np.ndarray, y: np.ndarray, rounds: int = 200) -> np.ndarray:
    """min |a x - y| with x >= 0 (Lawson and Hanson's active-set method)."""
    x, passive = np.zeros(a.shape[1]), np.zeros(a.shape[1], bool)
    for _ in range(rounds):
        w = a.T @ (y - a @ x)
        if passive.all() or (w[~passive] <= 1e-10 * max(1.0, float(np.abs(w).max()))).all():
            break
        passive[np.argmax(np.where(passive, -np.inf, w))] = True
        while True:
            z = np.zeros_like(x)
            z[passive] = np.linalg.lstsq(a[:, passive], y, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            step = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + step * (z - x)
            passive &= x > 1e-12
    return x


def fit(rows: Sequence[Mapping[str, float]], counted: Sequence[float],
        weights: Sequence[float] | None = None) -> dict[str, float]:
    """Non-negative coefficients minimising the weighted relative errors of the modelled instructions
    against the counted ones (``FEATURES`` of each row). The report's ratios are to the all-float and the
    all-int8 forms, so the benchmark weighs those rows up."""
    a = np.array([[r[k] for k in FEATURES] for r in rows], dtype=np.float64)
    y = np.asarray(counted, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    a = a / y[:, None] * w[:, None]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    x = _nnls(a / scale, w)
    return {k: float(v / s) for k, v, s in zip(FEATURES, x, scale, strict=True)}


def board_figures(artifact: Path, fp32_form: Path, all_int8: Path) -> dict[str, dict]:
    """Per CPU with coefficients: the artifact's modelled instructions per inference and its ratios to
    its FP32 form (the FP16-weight TFLite, run in FP32) and to the all-int8 candidate."""
    out: dict[str, dict] = {}
    for cpu in COEFFICIENTS:
        got, fp32, int8 = (instructions(p, cpu) for p in (artifact, fp32_form, all_int8))
        out[cpu] = {"instructions": round(got), "fp32": round(fp32), "all_int8": round(int8),
                    "x_fp32": round(got / fp32, 3), "x_all_int8": round(got / int8, 3)}
    return out
