"""A float32 TFLite from one whose weights are fp16 constants behind DEQUANTIZE ops, with a serving signature.

MediaPipe's hand landmark models store every weight as an fp16 buffer that a DEQUANTIZE op widens to
float32 at run time, and carry no SignatureDef. ai-edge-quantizer quantizes only float32 weights
and calibrates through a signature, so it leaves such a file unchanged. Folding each of those
DEQUANTIZE ops (its fp16 buffer widened once, here, into the float32 tensor its consumers already
read) and adding a signature gives the same network in the form the quantizer takes. fp16 -> fp32 is
exact, so the folded model computes what the original computes.

Edited through the flatbuffer schema's object API (``ai_edge_litert.schema_py_generated``, read and
written by ai-edge-quantizer's and LiteRT's own helpers), not a parser of our own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hagrid_edge.errors import HagridEdgeError

SIGNATURE_KEY = "serving_default"


@dataclass
class Folded:
    """The float32 model's bytes and what the fold did."""

    data: bytes
    folded: int  # DEQUANTIZE ops removed (fp16 constants widened)
    signature_added: bool


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def read_tflite(data: bytes, what: str):
    """The model object of a TFLite flatbuffer; a file that is none is one clear error."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise HagridEdgeError(f"{what}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        return fb.read_model(bytearray(data))
    except Exception as e:  # a truncated or corrupt flatbuffer raises from deep inside the reader
        raise HagridEdgeError(f"{what}: unreadable TFLite flatbuffer ({type(e).__name__})") from None


def _fp16_constant(model, tensor) -> bool:
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return tensor.type == _schema().TensorType.FLOAT16 and buffer is not None and buffer.data is not None


def fold_fp16_dequantize(model) -> int:
    """Replace every DEQUANTIZE of a constant fp16 tensor by a float32 constant; returns how many were folded.

    The float32 data goes into the fp16 tensor's buffer, which the DEQUANTIZE's output tensor (what the
    consumers read) then points at; the op and the fp16 tensor leave the graph.
    """
    schema = _schema()
    dequantize = {k for k, code in enumerate(model.operatorCodes)
                  if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE}
    folded, widened = 0, set()
    for graph in model.subgraphs:
        kept = []
        for op in graph.operators:
            source = graph.tensors[op.inputs[0]] if op.opcodeIndex in dequantize else None
            if source is None or not (source.buffer in widened or _fp16_constant(model, source)):
                kept.append(op)
                continue
            if source.buffer not in widened:  # a buffer two DEQUANTIZE ops share is widened once
                buffer = model.buffers[source.buffer]
                fp16 = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), "<f2")
                buffer.data = np.frombuffer(fp16.astype("<f4").tobytes(), np.uint8)
                widened.add(source.buffer)
            graph.tensors[op.outputs[0]].buffer = source.buffer
            folded += 1
        graph.operators = kept
        _drop_unused_tensors(graph)
    return folded


def _drop_unused_tensors(graph) -> None:
    """Remove tensors no op and no graph input/output refers to, renumbering the references."""
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators:
        used |= {t for t in [*op.inputs, *op.outputs, *(op.intermediates if op.intermediates is not None else [])]
                 if t >= 0}
    order = sorted(used)
    new = {old: k for k, old in enumerate(order)}

    def renumber(refs):
        return None if refs is None else [new[t] if t >= 0 else t for t in refs]

    graph.tensors = [graph.tensors[t] for t in order]
    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)
    for op in graph.operators:
        op.inputs, op.outputs, op.intermediates = renumber(op.inputs), renumber(op.outputs), renumber(op.intermediates)


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def add_signature(model, key: str = SIGNATURE_KEY) -> bool:
    """Give subgraph 0 a signature over its inputs and outputs (by tensor name) unless it has one."""
    if model.signatureDefs:
        return False
    schema = _schema()
    graph = model.subgraphs[0]

    def tensor_map(index: int):
        m = schema.TensorMapT()
        m.name, m.tensorIndex = _name(graph.tensors[index]), index
        return m

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = key, 0
    sig.inputs = [tensor_map(t) for t in graph.inputs]
    sig.outputs = [tensor_map(t) for t in graph.outputs]
    model.signatureDefs = [sig]
    return True


def float32_tflite(source: Path) -> Folded:
    """The float32, signed form of the TFLite file ``source`` (see the module docstring)."""
    from ai_edge_litert.tools.flatbuffer_utils import convert_object_to_bytearray

    source = Path(source)
    if not source.is_file():
        raise HagridEdgeError(f"{source}: no such file")
    model = read_tflite(source.read_bytes(), str(source))
    if len(model.subgraphs) != 1:
        raise HagridEdgeError(f"{source}: {len(model.subgraphs)} subgraphs; only single-graph models are folded")
    folded = fold_fp16_dequantize(model)
    signed = add_signature(model)
    graph = model.subgraphs[0]
    left = [_name(t) for t in graph.tensors if t.type == _schema().TensorType.FLOAT16]
    if left:
        raise HagridEdgeError(f"{source}: fp16 tensors other than DEQUANTIZE constants remain ({left[0]}, ...)")
    return Folded(bytes(convert_object_to_bytearray(model)), folded, signed)
