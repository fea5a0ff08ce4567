"""Mixed precision: find the layers whose INT8 costs most and keep them in float until accuracy holds.

Sensitivity of a layer = relative output error (noise / signal power, summed over the graph's outputs)
when only that layer is quantized, measured on calibration inputs. The guard then keeps the k most
sensitive layers in float for growing k and scores each candidate on real images, stopping at the
first within ``max_drop`` of FP32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from hagrid_edge.quantize.accuracy import Score, Scorer
from hagrid_edge.quantize.onnx_int8 import COMPUTE_OPS, quantize_qdq

SENSITIVITY_INPUTS = 32


@dataclass
class GuardResult:
    model: onnx.ModelProto
    score: Score
    float_layers: list[str]  # compute nodes kept in float (with their activation)
    within: bool
    trials: list[dict] = field(default_factory=list)  # {"float_layers": k, "value": metric}
    sensitivity: list[tuple[str, float]] = field(default_factory=list)


def layer_units(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Compute node name -> that node plus the Relu(s) that consume only its output."""
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


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _outputs(model: onnx.ModelProto, input_name: str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    sess = _session(model)
    runs = [sess.run(None, {input_name: x}) for x in inputs]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(runs[0]))]


def relative_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return float(sum(np.sum((g - r) ** 2) / max(float(np.sum(r ** 2)), 1e-12) for r, g in zip(ref, got, strict=True)))


def layer_sensitivity(fp32: onnx.ModelProto, ranges, method: str, input_name: str,
                      inputs: Sequence[np.ndarray]) -> list[tuple[str, float]]:
    """(compute node, relative output error with only it quantized), most sensitive first."""
    step = max(1, len(inputs) // SENSITIVITY_INPUTS)
    probe = list(inputs[::step][:SENSITIVITY_INPUTS])
    ref = _outputs(fp32, input_name, probe)
    out = []
    for name, unit in layer_units(fp32).items():
        q = quantize_qdq(fp32, ranges, method, only=unit)
        out.append((name, relative_error(ref, _outputs(q, input_name, probe))))
    return sorted(out, key=lambda t: -t[1])


def _schedule(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    return ks + [n]


def mixed_precision(fp32: onnx.ModelProto, ranges, method: str, input_name: str, inputs: Sequence[np.ndarray],
                    scorer: Scorer, reference: Score, first: tuple[onnx.ModelProto, Score], max_drop: float
                    ) -> GuardResult:
    """Keep the most sensitive layers in float until ``reference.value - score <= max_drop``.

    ``first`` is the fully quantized model and its score; when even all layers but none in INT8
    cannot get within ``max_drop``, the best candidate is returned with ``within=False``.
    """
    model, score = first
    trials = [{"float_layers": 0, "value": score.value}]
    if reference.value - score.value <= max_drop:
        return GuardResult(model, score, [], True, trials)
    ranking = layer_sensitivity(fp32, ranges, method, input_name, inputs)
    units = layer_units(fp32)
    best = GuardResult(model, score, [], False, trials, ranking)
    for k in _schedule(len(ranking)):
        keep = [name for name, _ in ranking[:k]]
        cand = quantize_qdq(fp32, ranges, method, exclude=[n for name in keep for n in units[name]])
        cand_score = scorer.score_model(cand)
        trials.append({"float_layers": k, "value": cand_score.value})
        if cand_score.value > best.score.value:
            best = GuardResult(cand, cand_score, keep, False, trials, ranking)
        if reference.value - cand_score.value <= max_drop:
            return GuardResult(cand, cand_score, keep, True, trials, ranking)
    return best
