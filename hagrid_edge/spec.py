"""The model spec: the contract that travels with every artifact.

A runtime needs nothing but the artifact and its spec to turn a camera frame into boxes and gesture
names: input geometry and normalisation, quantization of input and outputs, what the outputs are
and how to decode them, default thresholds and provenance. The spec is embedded where the format
allows (ONNX ``metadata_props``) and always written as a ``<artifact>.json`` sidecar.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from hagrid_edge.errors import SpecError
from hagrid_edge.paths import write_text_atomic

SPEC_VERSION = 1
ONNX_METADATA_KEY = "hagrid_edge.spec"
TFLITE_SPEC_MEMBER = "hagrid_edge.spec.json"  # file in the zip appended to a .tflite

TASKS = ("detector", "classifier", "landmarks")  # landmarks: hand crop -> presence (logits) + points
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR")
RESIZES = ("letterbox", "stretch")
DTYPES = ("float32", "float16", "int8", "uint8")
# What the graph's outputs are:
#   ssd_raw: per-prior box regression + class logits; decode and NMS happen on the host (priors in spec)
#   nms:     boxes, scores, labels after NMS inside the graph
#   logits:  classifier logits
OUTPUT_KINDS = {
    "ssd_raw": ("bbox_regression", "cls_logits"),
    "nms": ("boxes", "scores", "labels"),
    "logits": ("logits",),
}
BOX_UNITS = ("normalized", "pixels")  # relative to the model input (after resize/letterbox)
SCORE_ACTIVATIONS = ("softmax", "sigmoid", "none")
CROP_KINDS = ("square", "box")  # square: the box grown to a square; box: the box itself


@dataclass(frozen=True)
class Quant:
    """Affine quantization of one tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    def quantize(self, x: np.ndarray) -> np.ndarray:
        info = np.iinfo(self.dtype)
        q = np.round(x / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float32) - self.zero_point) * np.float32(self.scale)


@dataclass
class ModelSpec:
    task: str
    classes: list[str]
    input_size: tuple[int, int]  # (height, width)
    outputs: str
    output_names: dict[str, str]  # role -> tensor name
    input_name: str = "input"
    layout: str = "NCHW"
    color: str = "RGB"
    resize: str = "letterbox"
    pad_value: int = 114
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # pixel units (0..255)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    input_dtype: str = "float32"
    input_quant: Quant | None = None
    output_quant: dict[str, Quant] = field(default_factory=dict)
    box_units: str = "pixels"
    priors: np.ndarray | None = None  # ssd_raw: [N, 4] cx, cy, w, h in input pixels
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_activation: str = "softmax"
    background_class: bool = True  # ssd_raw: logit 0 is background, classes start at 1
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_detections: int = 100
    crop: dict[str, Any] | None = None  # classifiers fed with hand crops: {"kind": "square", "expand": 1.0}
    class_map: dict[str, str] | None = None  # model class -> HaGRID label (others: no_gesture)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.box_coder_weights = tuple(float(v) for v in self.box_coder_weights)  # type: ignore[assignment]
        if self.priors is not None:
            self.priors = np.asarray(self.priors, dtype=np.float32).reshape(-1, 4)
        self.validate()

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SpecError(f"spec: {what}")

        need(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        need(bool(self.classes) and all(isinstance(c, str) and c for c in self.classes),
             "classes must be a non-empty list of names")
        need(len(set(self.classes)) == len(self.classes), "classes must be unique")
        need(len(self.input_size) == 2 and min(self.input_size) > 0,
             f"input_size must be [height, width] > 0, got {list(self.input_size)}")
        need(self.layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        need(self.color in COLORS, f"color must be one of {COLORS}, got {self.color!r}")
        need(self.resize in RESIZES, f"resize must be one of {RESIZES}, got {self.resize!r}")
        need(0 <= self.pad_value <= 255, "pad_value must be in 0..255")
        need(len(self.mean) == 3 and len(self.std) == 3 and min(self.std) > 0,
             "mean and std must have 3 values, std > 0")
        need(self.input_dtype in DTYPES, f"input_dtype must be one of {DTYPES}, got {self.input_dtype!r}")
        if self.input_dtype in ("int8", "uint8"):
            need(self.input_quant is not None, f"input_dtype {self.input_dtype} needs input_quant")
        need(self.outputs in OUTPUT_KINDS,
             f"outputs must be one of {sorted(OUTPUT_KINDS)}, got {self.outputs!r}")
        missing = [r for r in OUTPUT_KINDS[self.outputs] if r not in self.output_names]
        need(not missing, f"output_names lacks {missing} for outputs {self.outputs!r}")
        need(self.box_units in BOX_UNITS, f"box_units must be one of {BOX_UNITS}")
        need(self.score_activation in SCORE_ACTIVATIONS,
             f"score_activation must be one of {SCORE_ACTIVATIONS}")
        need(0.0 <= self.score_threshold <= 1.0 and 0.0 < self.iou_threshold <= 1.0,
             "score_threshold must be in [0, 1] and iou_threshold in (0, 1]")
        need(self.max_detections > 0, "max_detections must be positive")
        if self.task == "detector":
            need(self.outputs in ("ssd_raw", "nms"), f"a detector's outputs are ssd_raw or nms, not {self.outputs!r}")
        elif self.task == "landmarks":
            need(self.outputs == "logits" and "points" in self.output_names and self.crop is not None,
                 "a landmark model takes a hand crop and its outputs are logits (presence) and points")
        else:
            need(self.outputs == "logits", "a classifier's outputs are logits")
        if self.outputs == "ssd_raw":
            need(self.priors is not None and len(self.priors) > 0, "outputs ssd_raw needs priors")
        if self.crop is not None:
            need(self.crop.get("kind") in CROP_KINDS, f"crop.kind must be one of {CROP_KINDS}")
        if self.class_map is not None:
            unknown = sorted(set(self.class_map) - set(self.classes))
            need(not unknown, f"class_map names classes the model lacks: {unknown[:5]}")

    # ---- derived ----------------------------------------------------------------------------
    def label(self, index: int) -> str:
        """The HaGRID label of model class ``index`` (through ``class_map`` where there is one)."""
        name = self.classes[index]
        if self.class_map is None:
            return name
        return self.class_map.get(name, "no_gesture")

    @property
    def labels(self) -> list[str]:
        """Distinct HaGRID labels this model can emit, in first-seen order."""
        return list(dict.fromkeys(self.label(i) for i in range(len(self.classes))))

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["box_coder_weights"] = list(self.box_coder_weights)
        d["input_quant"] = asdict(self.input_quant) if self.input_quant else None
        d["output_quant"] = {k: asdict(v) for k, v in self.output_quant.items()}
        if self.priors is not None:
            raw = np.ascontiguousarray(self.priors, dtype="<f4").tobytes()
            d["priors"] = {"encoding": "base64-float32-le", "shape": list(self.priors.shape),
                           "data": base64.b64encode(raw).decode("ascii")}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, source: str = "spec") -> ModelSpec:
        if not isinstance(d, dict):
            raise SpecError(f"{source}: a spec is a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"{source}: unknown spec field(s) {unknown}")
        d = dict(d)
        try:
            if d.get("version", SPEC_VERSION) > SPEC_VERSION:
                raise SpecError(f"{source}: spec version {d['version']} is newer than this hagrid-edge "
                                f"understands ({SPEC_VERSION}); upgrade hagrid-edge")
            if d.get("input_quant") is not None:
                d["input_quant"] = Quant(**d["input_quant"])
            d["output_quant"] = {k: Quant(**v) for k, v in (d.get("output_quant") or {}).items()}
            priors = d.get("priors")
            if isinstance(priors, dict):
                raw = base64.b64decode(priors["data"])
                d["priors"] = np.frombuffer(raw, dtype="<f4").reshape(priors["shape"]).copy()
            return cls(**d)
        except SpecError as e:
            message, prefix = str(e), "spec: "
            raise SpecError(f"{source}: {message[len(prefix):] if message.startswith(prefix) else message}") from None
        except (TypeError, ValueError, KeyError) as e:
            raise SpecError(f"{source}: malformed spec ({e})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(data, source)


# ---- files ----------------------------------------------------------------------------------
def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_spec_file(path: str | Path) -> ModelSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec ({e.strerror})") from None
    return ModelSpec.from_json(text, str(path))


def save_sidecar(spec: ModelSpec, artifact: str | Path) -> Path:
    out = sidecar_path(artifact)
    write_text_atomic(out, spec.to_json())
    return out


def embed_in_onnx(model: Any, spec: ModelSpec) -> None:
    """Put the spec into an ``onnx.ModelProto``'s ``metadata_props`` (replacing an older one)."""
    keep = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(spec.to_dict(), sort_keys=True)


@functools.lru_cache(maxsize=1)
def _onnx_outline_class() -> Any:
    """A protobuf message with the few ONNX ``ModelProto`` fields the runtime reads (metadata_props, node
    op types, initializer data types; onnx.proto's field numbers): parsed with protobuf, a dependency of
    ONNX Runtime, so a board needs no onnx. Every other field is skipped."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="hagrid_edge_onnx_outline.proto", package="hagrid_edge_onnx",
                                               syntax="proto2")
    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    # message -> fields (name, number, label, scalar type or message name)
    schema = {
        "StringStringEntryProto": [("key", 1, one, f.TYPE_STRING), ("value", 2, one, f.TYPE_STRING)],
        "NodeProto": [("op_type", 4, one, f.TYPE_STRING)],
        "TensorProto": [("data_type", 2, one, f.TYPE_INT32)],
        "GraphProto": [("node", 1, many, "NodeProto"), ("initializer", 5, many, "TensorProto")],
        "ModelProto": [("graph", 7, one, "GraphProto"), ("metadata_props", 14, many, "StringStringEntryProto")],
    }
    for name, fields_ in schema.items():
        message = proto.message_type.add(name=name)
        for field_name, number, label, kind in fields_:
            if isinstance(kind, str):
                message.field.add(name=field_name, number=number, label=label, type=f.TYPE_MESSAGE,
                                  type_name=f".hagrid_edge_onnx.{kind}")
            else:
                message.field.add(name=field_name, number=number, label=label, type=kind)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("hagrid_edge_onnx.ModelProto"))


@dataclass(frozen=True)
class OnnxOutline:
    """What the runtime reads from an ONNX file without the onnx package."""

    metadata: dict[str, str]
    op_types: frozenset[str]
    initializer_types: dict[int, int]  # ONNX TensorProto data type (1 float, 10 float16, ...) -> count


def read_onnx_outline(path: str | Path) -> OnnxOutline:
    from google.protobuf.message import DecodeError

    model = _onnx_outline_class()()
    try:
        model.ParseFromString(Path(path).read_bytes())
    except DecodeError as e:  # not a protobuf, or a truncated one
        raise SpecError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    types: dict[int, int] = {}
    for t in model.graph.initializer:
        types[t.data_type] = types.get(t.data_type, 0) + 1
    return OnnxOutline({p.key: p.value for p in model.metadata_props},
                       frozenset(n.op_type for n in model.graph.node), types)


def _read_onnx_embedded(path: Path) -> ModelSpec | None:
    text = read_onnx_outline(path).metadata.get(ONNX_METADATA_KEY)
    return None if text is None else ModelSpec.from_json(text, f"{path} (metadata_props)")


def _read_tflite_embedded(path: Path) -> ModelSpec | None:
    """The spec from the zip appended to a TFLite flatbuffer (TFLite's associated-file packing)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            if TFLITE_SPEC_MEMBER not in z.namelist():
                return None
            text = z.read(TFLITE_SPEC_MEMBER).decode("utf-8")
    except (zipfile.BadZipFile, OSError):
        return None
    return ModelSpec.from_json(text, f"{path} ({TFLITE_SPEC_MEMBER})")


# Formats that can carry the spec inside the artifact; others rely on the sidecar.
EMBEDDED_READERS = {".onnx": _read_onnx_embedded, ".tflite": _read_tflite_embedded}


def resolve_spec(artifact: str | Path, override: str | Path | None = None) -> ModelSpec:
    """The spec of ``artifact``: ``override`` file, else sidecar, else embedded, else the registry."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise SpecError(f"{artifact}: no such model file")
    if override is not None:
        return load_spec_file(override)
    side = sidecar_path(artifact)
    if side.is_file():
        return load_spec_file(side)
    reader = EMBEDDED_READERS.get(artifact.suffix.lower())
    if reader is not None:
        spec = reader(artifact)
        if spec is not None:
            return spec
    from hagrid_edge.registry import lookup

    spec = lookup(sha256_file(artifact))
    if spec is not None:
        return spec
    raise SpecError(f"{artifact}: no model spec (no {side.name} beside it, none embedded, and the file is "
                    f"not a known model); pass --spec FILE")
