"""INT8 TFLite candidates with chosen layers in float: ai-edge-quantizer recipes on the float TFLite.

The float32 TFLite (from onnx2tf, with its serving signature) is calibrated once on our calibration
inputs; each candidate is then a recipe: every op ai-edge-quantizer supports in int8 (weights
per-channel symmetric, activations per-tensor asymmetric, as LiteRT's int8 kernels want), except the
layers kept in float, which get ``no_quantize``. Activation ranges are ours, not the quantizer's: its
calibration keeps a moving average of each photo's min/max, which clips the rare large activations
that this detector's boxes depend on (measured on 200 tune photos: agreement with FP32 96.6 with the
moving average, 98.5 with the 99.999th percentile of all calibration values, the same percentile as
the QDQ ONNX; 99.85 against 98.6 with the same 13 layers in float). Layers are the ops with weights (convolutions and
fully connected), addressed by their scope (output tensor names) as the quantizer matches them.
The heads (the layers that produce the model's outputs: box regression, class logits) always stay
float, as in the QDQ ONNX: int8 outputs round box offsets and scores that NMS and mAP50-95 need
exact, and the heads are a small share of the work. The input is int8.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.quantize import board_cost, range_choice
from hagrid_edge.quantize.candidates import Candidate
from hagrid_edge.quantize.choices import DEFAULT_METHOD, PERCENTILES
from hagrid_edge.spec import ModelSpec

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
QUANTIZER = "ai-edge-quantizer"
RANGE_PROBE_INPUTS = 2  # the quantizer's own calibration only names the tensors it wants ranges for


def _quiet():
    """ai-edge-quantizer prints progress bars and a size report on every call."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    logging.getLogger("absl").setLevel(logging.ERROR)
    return stack


def weight_layers(tflite: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(layer -> the op scopes it keeps in float, head op scopes), layers in graph order.

    A layer is an op with weights together with the ops after it that only it feeds (pads, reshapes
    before the next layer), so that a layer kept in float hands a float tensor on instead of being
    requantized around a pad. An op that joins the outputs of several ops (a residual add, a
    concatenation) is a unit of its own, so the guard can keep it in float too: measured on our
    gesture detector, its adds in int8 cost 1 to 2 agreement points even with every layer with weights
    in float. The heads are the layers whose output reaches a graph output through
    no other layer with weights, with the reshapes and concatenations that take them there.
    """
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(Path(tflite))
    graph = model.subgraphs[0]
    ops = list(graph.operators)
    weighted = [fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode) in WEIGHT_OPS
                for op in ops]
    scope = [fb.get_op_scope(op, graph.tensors) for op in ops]
    producer = {t: k for k, op in enumerate(ops) for t in op.outputs}
    heads, todo, seen = set(), list(graph.outputs), set()
    while todo:
        k = producer.get(todo.pop())
        if k is None or k in seen:
            continue
        seen.add(k)
        if weighted[k]:
            heads.add(k)
        else:
            todo += [t for t in ops[k].inputs if t >= 0]
    owner: dict[int, int] = {}  # op -> the layer (weighted op) it belongs to
    layers: dict[int, list[str]] = {}
    for k, op in enumerate(ops):
        if weighted[k]:
            owner[k] = k
            layers[k] = [scope[k]]
            continue
        fed = {producer[t] for t in op.inputs if t >= 0 and t in producer}
        if len(fed) > 1 and k not in seen:  # joins several layers (a residual add, a concatenation): a unit
            owner[k] = k
            layers[k] = [scope[k]]
            continue
        sources = {owner.get(j) for j in fed}
        if len(sources) == 1 and None not in sources:  # fed by one layer only: part of it
            (owner[k],) = sources
            layers[owner[k]].append(scope[k])
    return ({scope[k]: layers[k] for k in layers if k not in heads},
            [scope[k] for k in sorted(seen)])


def op_inputs(tflite: Path) -> dict[str, list[str]]:
    """Each op's scope -> the scopes of the ops that produce its inputs (graph inputs and constants left out)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    graph = fb.read_model(Path(tflite)).subgraphs[0]
    ops = list(graph.operators)
    scope = [fb.get_op_scope(op, graph.tensors) for op in ops]
    producer = {t: k for k, op in enumerate(ops) for t in op.outputs}
    return {scope[k]: [scope[producer[t]] for t in op.inputs if t in producer] for k, op in enumerate(ops)}


def fed_by_float(float_ops: Sequence[str], inputs: dict[str, list[str]], layer_ops: set[str]) -> list[str]:
    """The ops outside every layer (``layer_ops``) that only float ops feed, in graph order, such as a
    residual add between two layers kept in float: quantizing them would requantize float tensors for no
    int8 work."""
    floating, added = set(float_ops), []
    for op, sources in inputs.items():
        if op not in floating and op not in layer_ops and sources and all(s in floating for s in sources):
            floating.add(op)
            added.append(op)
    return added


class _Tails:
    """The ``count`` largest values seen so far (of one tensor, over many inputs), kept by filtering."""

    def __init__(self, count: int) -> None:
        self.count, self.values = count, np.empty(0, np.float32)

    def add(self, x: np.ndarray) -> None:
        if len(self.values) >= self.count:
            x = x[x > self.values[0]]  # most values fall below the current tail: one vectorised compare
        values = np.concatenate([self.values, x])
        if len(values) > self.count:
            values = np.partition(values, len(values) - self.count)[-self.count:]
        self.values = np.sort(values)


def activation_ranges(float_tflite: Path, inputs_nhwc: Sequence[np.ndarray], names: Sequence[str],
                      levels: Sequence[float]) -> dict[str, tuple[float, float]]:
    """(low, high) of each named tensor over all inputs, always including 0. One level: the ``100 - level`` and
    ``level`` percentiles of all its values (100: the true min and max). Several: each tensor's own level
    among them, the one with the least expected int8 error (``range_choice.from_tails``)."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # LiteRT warns that keeping every tensor is meant for debugging: it is
        warnings.simplefilter("ignore")  # what reading every activation needs, one photo at a time
        interp = Interpreter(model_path=str(float_tflite), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    shapes = {d["name"]: int(np.prod(d["shape"])) for d in interp.get_tensor_details()}
    wanted = [n for n in names if n in index]
    tail = {n: range_choice.tail_count(shapes[n] * len(inputs_nhwc), min(levels)) for n in wanted}
    high = {n: _Tails(tail[n]) for n in wanted}
    low = {n: _Tails(tail[n]) for n in wanted}  # of the negated values
    nonzero = dict.fromkeys(wanted, 0)
    (inp,) = interp.get_input_details()
    for x in inputs_nhwc:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        for n in wanted:
            v = interp.get_tensor(index[n]).ravel()
            high[n].add(v)
            low[n].add(-v)
            nonzero[n] += int(np.count_nonzero(v))
    chosen = {n: range_choice.from_tails(high[n].values, low[n].values, shapes[n] * len(inputs_nhwc), nonzero[n],
                                         levels) for n in wanted}
    return {n: (c.low, c.high) for n, c in chosen.items()}


class TFLiteCandidates:
    """INT8 TFLite candidates of one float32 TFLite model."""

    target = "tflite-int8"

    def __init__(self, float_tflite: Path, calib_inputs: Sequence[np.ndarray], make_spec, work: Path,
                 input_range: tuple[float, float] | None = None,
                 levels: Sequence[float] = (PERCENTILES[DEFAULT_METHOD],), layout: str = "NCHW") -> None:
        """``calib_inputs``: batch-1 float32 model inputs in ``layout`` (NCHW, as the ONNX models take them, or
        NHWC, as a TFLite source's spec builds them); ``make_spec(path)``: the artifact's spec;
        ``input_range``: the input's exact value range (the normalisation of pixels 0..255), used instead of
        the calibrated one, so int8 steps fall on pixel steps (lossless for (x - 127) / 128);
        ``levels``: the percentile of each activation's calibration values kept in range (100: min/max), as the
        QDQ ONNX's; several: each tensor's own, by quantization error (``choices.tflite_levels``)."""
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import quantizer, recipe

        self.float_tflite, self.make_spec, self.work = Path(float_tflite), make_spec, work
        self._ops, self.heads = weight_layers(self.float_tflite)
        self._inputs = op_inputs(self.float_tflite)
        self._layer_ops = {op for ops in self._ops.values() for op in ops} | set(self.heads)
        self.units = list(self._ops)
        if not self.units and not self.heads:
            raise HagridEdgeError(f"{float_tflite}: no convolution or fully connected layers to quantize")
        signatures = Interpreter(model_path=str(self.float_tflite)).get_signature_list()
        if not signatures:
            raise HagridEdgeError(f"{float_tflite}: the float TFLite has no signature to calibrate through")
        key, sig = next(iter(signatures.items()))
        (arg,) = sig["inputs"]
        arg_tensor = Interpreter(model_path=str(self.float_tflite)).get_input_details()[0]["name"]
        order = (0, 2, 3, 1) if layout == "NCHW" else (0, 1, 2, 3)
        nhwc = [np.ascontiguousarray(np.asarray(x, np.float32).transpose(order)) for x in calib_inputs]
        q = quantizer.Quantizer(str(self.float_tflite), recipe.static_wi8_ai8())
        with _quiet():
            self.qsvs = q.calibrate({key: [{arg: x} for x in nhwc[:RANGE_PROBE_INPUTS]]}, num_threads=2)
        for name, (lo, hi) in activation_ranges(self.float_tflite, nhwc, list(self.qsvs), levels).items():
            shape = np.shape(self.qsvs[name]["min"])
            self.qsvs[name] = {"min": np.full(shape, lo, np.float32), "max": np.full(shape, hi, np.float32)}
        self.levels = tuple(levels)
        if input_range is not None:
            shape = np.shape(self.qsvs[arg_tensor]["min"]) if arg_tensor in self.qsvs else ()
            self.qsvs[arg_tensor] = {"min": np.full(shape, input_range[0], np.float32),
                                     "max": np.full(shape, input_range[1], np.float32)}
        self.calibration_inputs = len(calib_inputs)
        self._count = 0

    def unit_costs(self, cpu: str = board_cost.REFERENCE_CPU) -> dict[str, float] | None:
        """Instructions per inference each unit adds on ``cpu`` when kept in float (``board_cost``)."""
        return board_cost.unit_costs(self.float_tflite, self._ops, cpu)

    def _recipe(self, float_layers: Sequence[str], only: Sequence[str] | None) -> list[dict]:
        from ai_edge_quantizer import recipe

        int8 = recipe.static_wi8_ai8()
        if only is None:
            float_ops = [*(o for u in float_layers for o in self._ops[u]), *self.heads]
            keep = [{"regex": f"^{re.escape(op)}$", "operation": "*", "algorithm_key": "no_quantize"}
                    for op in [*float_ops, *fed_by_float(float_ops, self._inputs, self._layer_ops)]]
            # the graph outputs too: the quantizer would otherwise requantize the float heads' outputs
            return int8 + keep + [{"regex": ".*", "operation": "OUTPUT", "algorithm_key": "no_quantize"}]
        entry = int8[0]
        return [{**entry, "regex": f"^{re.escape(op)}$"} for u in only for op in self._ops[u]]

    def build(self, float_layers: Sequence[str] = (), only: Sequence[str] | None = None) -> Candidate:
        from ai_edge_quantizer import quantizer

        self._count += 1
        path = self.work / f"tflite_candidate_{self._count}.tflite"
        q = quantizer.Quantizer(str(self.float_tflite), self._recipe(float_layers, only))
        with _quiet():
            result = q.quantize(self.qsvs, enable_progress_report=False)
        path.write_bytes(result.quantized_model)
        spec: ModelSpec = self.make_spec(path)
        return Candidate(path, spec, list(float_layers))
