"""INT8 TFLite candidates with chosen layers in float: ai-edge-quantizer recipes on the float TFLite.

The float32 TFLite (from onnx2tf, with its serving signature) is calibrated once on our calibration
inputs; each candidate is then a recipe: every op ai-edge-quantizer supports in int8 (weights
per-channel symmetric, activations per-tensor asymmetric, as LiteRT's int8 kernels want), except the
layers kept in float, which get ``no_quantize``. Layers are the ops with weights (convolutions and
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.quantize.candidates import Candidate
from hagrid_edge.spec import ModelSpec

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
QUANTIZER = "ai-edge-quantizer"


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
    requantized around a pad. The heads are the layers whose output reaches a graph output through
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
        sources = {owner.get(producer.get(t, -1)) for t in op.inputs if t >= 0 and t in producer}
        if len(sources) == 1 and None not in sources:  # fed by one layer only: part of it
            (owner[k],) = sources
            layers[owner[k]].append(scope[k])
    return ({scope[k]: layers[k] for k in layers if k not in heads},
            [scope[k] for k in sorted(seen)])


class TFLiteCandidates:
    """INT8 TFLite candidates of one float32 TFLite model."""

    target = "tflite-int8"

    def __init__(self, float_tflite: Path, calib_inputs: Sequence[np.ndarray], make_spec, work: Path,
                 input_range: tuple[float, float] | None = None) -> None:
        """``calib_inputs``: batch-1 NCHW float32 model inputs; ``make_spec(path)``: the artifact's spec;
        ``input_range``: the input's exact value range (the normalisation of pixels 0..255), used instead of
        the calibrated one, so int8 steps fall on pixel steps (lossless for (x - 127) / 128)."""
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import quantizer, recipe

        self.float_tflite, self.make_spec, self.work = Path(float_tflite), make_spec, work
        self._ops, self.heads = weight_layers(self.float_tflite)
        self.units = list(self._ops)
        if not self.units and not self.heads:
            raise HagridEdgeError(f"{float_tflite}: no convolution or fully connected layers to quantize")
        signatures = Interpreter(model_path=str(self.float_tflite)).get_signature_list()
        if not signatures:
            raise HagridEdgeError(f"{float_tflite}: the float TFLite has no signature to calibrate through")
        key, sig = next(iter(signatures.items()))
        (arg,) = sig["inputs"]
        arg_tensor = Interpreter(model_path=str(self.float_tflite)).get_input_details()[0]["name"]
        data = {key: [{arg: np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))}
                      for x in calib_inputs]}
        q = quantizer.Quantizer(str(self.float_tflite), recipe.static_wi8_ai8())
        with _quiet():
            self.qsvs = q.calibrate(data, num_threads=2)
        if input_range is not None:
            shape = np.shape(self.qsvs[arg_tensor]["min"]) if arg_tensor in self.qsvs else ()
            self.qsvs[arg_tensor] = {"min": np.full(shape, input_range[0], np.float32),
                                     "max": np.full(shape, input_range[1], np.float32)}
        self.calibration_inputs = len(calib_inputs)
        self._count = 0

    def _recipe(self, float_layers: Sequence[str], only: Sequence[str] | None) -> list[dict]:
        from ai_edge_quantizer import recipe

        int8 = recipe.static_wi8_ai8()
        if only is None:
            keep = [{"regex": f"^{re.escape(op)}$", "operation": "*", "algorithm_key": "no_quantize"}
                    for op in [*(o for u in float_layers for o in self._ops[u]), *self.heads]]
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
