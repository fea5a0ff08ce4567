"""What the bench reports about each artifact format: name, runtime, precision, I/O signature.

The formats themselves (suffixes, names, runtimes) are the one table ``hagrid_edge.formats``, which
``open_backend`` runs artifacts by; this module adds, per format, how to tell the precision from the
file itself and how to read the input and output tensors of a file that has no spec (latency-only rows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.formats import BY_SUFFIX

FP32, FP16, INT8, INT8_DYNAMIC, UNKNOWN = "FP32", "FP16", "INT8", "INT8-dynamic", "unknown"


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy name: float32, int8, ...
    quant: tuple[float, int] | None = None  # (scale, zero_point) of an integer tensor


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True)
class Format:
    name: str
    runtime: str  # the distribution whose version the report records
    precision: Callable[[Path], str] | None  # from the file itself; None: only the spec can say
    signature: Callable[[Path], Signature] | None  # for latency-only rows; None: not supported


# ---- ONNX -------------------------------------------------------------------------------------
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}
_ONNX_STATIC_INT8 = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd"}
_ONNX_DYNAMIC_INT8 = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}


def _onnx_model(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError and friends for a file that is not ONNX
        raise HagridEdgeError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None


def onnx_precision(path: Path) -> str:
    """INT8 for a QDQ / QLinear graph, INT8-dynamic for dynamic quantization, FP16 for half weights.

    Read with protobuf alone (``spec.read_onnx_outline``): a board's runtime install has no onnx."""
    from hagrid_edge.spec import SpecError, read_onnx_outline

    try:
        outline = read_onnx_outline(path)
    except SpecError as e:
        raise HagridEdgeError(str(e)) from None
    ops = set(outline.op_types)
    if ops & _ONNX_DYNAMIC_INT8 and not ops & (_ONNX_STATIC_INT8 - {"DequantizeLinear"}):
        return INT8_DYNAMIC
    if ops & _ONNX_STATIC_INT8:
        return INT8
    weights = outline.initializer_types
    return FP16 if weights.get(10, 0) > weights.get(1, 0) else FP32


def onnx_signature(path: Path) -> Signature:
    graph = _onnx_model(path).graph
    weights = {t.name for t in graph.initializer}

    def tensor(v: Any) -> Tensor:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim)  # symbolic -> 1
        return Tensor(v.name, dims, _ONNX_DTYPES.get(t.elem_type, f"onnx-type-{t.elem_type}"))

    return Signature(tuple(tensor(v) for v in graph.input if v.name not in weights),
                     tuple(tensor(v) for v in graph.output))


# ---- TFLite -----------------------------------------------------------------------------------
def _tflite_subgraph(path: Path) -> tuple[Any, Any, dict[int, str]]:
    """The main subgraph of a .tflite flatbuffer, its model, and tensor type number -> numpy name."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise HagridEdgeError(f"{path}: reading a .tflite file needs ai-edge-litert "
                              "(pip install 'hagrid-edge[tflite]')") from None
    data = path.read_bytes()
    try:
        if not schema.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError("no TFL3 identifier")
        model = schema.Model.GetRootAs(data, 0)
        sub = model.Subgraphs(0)
    except Exception:  # flatbuffers raises assorted errors on garbage
        raise HagridEdgeError(f"{path}: not a readable TFLite model") from None
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return model, sub, types


def tflite_precision(path: Path) -> str:
    """INT8 when activations are integer, INT8-dynamic when only weights are, FP16 for half weights."""
    model, sub, types = _tflite_subgraph(path)
    activations, weights = Counter(), Counter()
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        is_const = model.Buffers(t.Buffer()).DataLength() > 0 if t.Buffer() < model.BuffersLength() else False
        (weights if is_const else activations)[types.get(t.Type(), "?")] += 1
    if activations["int8"] + activations["uint8"] + activations["int16"]:
        return INT8
    if weights["int8"] + weights["uint8"]:
        return INT8_DYNAMIC
    return FP16 if weights["float16"] else FP32


def tflite_signature(path: Path) -> Signature:
    _, sub, types = _tflite_subgraph(path)

    def tensor(index: int) -> Tensor:
        t = sub.Tensors(index)
        q = t.Quantization()
        quant = None
        if q is not None and q.ScaleLength() == 1:
            quant = (float(q.Scale(0)), int(q.ZeroPoint(0)))
        return Tensor(t.Name().decode(), tuple(int(d) for d in t.ShapeAsNumpy()), types.get(t.Type(), "?"), quant)

    return Signature(tuple(tensor(sub.Inputs(i)) for i in range(sub.InputsLength())),
                     tuple(tensor(sub.Outputs(i)) for i in range(sub.OutputsLength())))


# ---- the table ---------------------------------------------------------------------------------
# Formats whose files the bench can read itself; the others' precision comes from their spec.
_READERS: dict[str, tuple[Callable[[Path], str], Callable[[Path], Signature]]] = {
    "ONNX": (onnx_precision, onnx_signature),
    "TFLite": (tflite_precision, tflite_signature),
}
FORMATS: dict[str, Format] = {
    suffix: Format(fmt.name, fmt.runtime, *_READERS.get(fmt.name, (None, None)))
    for suffix, fmt in BY_SUFFIX.items()
}


def format_of(path: str | Path) -> Format:
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise HagridEdgeError(f"{path}: not a model artifact the bench knows (suffixes: {', '.join(FORMATS)})")
    return fmt


def declared_precision(provenance: dict[str, Any]) -> str | None:
    """What the tool that made the artifact says (``precision``, or a TensorRT engine's record)."""
    value = provenance.get("precision") or (provenance.get("engine") or {}).get("precision")
    return str(value).upper().replace("INT8_DYNAMIC", INT8_DYNAMIC) if value else None


def precision_of(path: str | Path, provenance: dict[str, Any]) -> str:
    """The file's own evidence first; else what its spec's provenance declares; else unknown."""
    path = Path(path)
    fmt = format_of(path)
    if fmt.precision is not None:
        return fmt.precision(path)
    return declared_precision(provenance) or UNKNOWN


def source_sha256(provenance: dict[str, Any]) -> str | None:
    """The sha256 of the FP32 artifact this one was made from, where the making tool recorded it."""
    return provenance.get("source_sha256") or (provenance.get("engine") or {}).get("source_onnx_sha256")


def is_int8(precision: str) -> bool:
    return precision.startswith(INT8)
