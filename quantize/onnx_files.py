"""ONNX files: reading one with a clear error, pinning the batch for converters, and writing one with
its spec embedded and beside it, atomically and only once it loads in ONNX Runtime."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import onnx

from hagrid_edge.errors import HagridEdgeError, first_line
from hagrid_edge.spec import ModelSpec, embed_in_onnx, save_sidecar


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model)
    try:
        return onnx.load(str(model))
    except Exception as e:  # onnx raises DecodeError and others for a corrupt file
        raise HagridEdgeError(f"{model}: not a readable ONNX model ({type(e).__name__})") from None


def fix_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """A copy with the batch dimension of inputs and outputs pinned (converters that infer layouts,
    such as onnx2tf, mistake channels for width when the batch is symbolic)."""
    out = copy.deepcopy(model)
    for vi in [*out.graph.input, *out.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return out


def save_onnx_with_spec(model: onnx.ModelProto, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``model`` with ``spec`` embedded and as ``<path>.json``; renamed into place only once it loads."""
    import onnxruntime as ort

    from hagrid_edge.paths import atomic_path
    from hagrid_edge.spec import ONNX_METADATA_KEY

    path = Path(path)
    model = copy.deepcopy(model)
    embed_in_onnx(model, spec)
    buf = io.BytesIO()
    onnx.save(model, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's own exception types
            raise HagridEdgeError(f"{path}: the written model does not load in ONNX Runtime "
                                  f"({first_line(e)})"
                                  ) from None
        if not any(p.key == ONNX_METADATA_KEY for p in onnx.load(str(tmp), load_external_data=False).metadata_props):
            raise HagridEdgeError(f"{path}: the spec did not survive writing")
    save_sidecar(spec, path)
    return path
