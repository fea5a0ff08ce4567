"""Checkpoint -> FP32 ONNX with raw head outputs, the spec embedded and beside it, checked against PyTorch.

Detectors export ``bbox_regression`` [B, N, 4] and ``cls_logits`` [B, N, C]; the priors, box coder
weights, softmax and background class travel in the spec, and decoding + NMS run in
``hagrid_edge.processing`` on the host (NMS inside the graph exports badly and quantizes worse).
Classifiers export ``logits`` and ``leading_hand``. The batch dimension is dynamic; the default
opset (17) has per-channel QuantizeLinear/DequantizeLinear for INT8 QDQ.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.images import split_frames
from hagrid_edge.paths import DEFAULT_DATA, atomic_path
from hagrid_edge.spec import ModelSpec, embed_in_onnx, save_sidecar, sha256_file

MIN_OPSET = 13  # per-channel (axis) QuantizeLinear / DequantizeLinear


class _Outputs(nn.Module):
    """Returns the model's output dict as a tuple in the spec's role order (ONNX outputs are positional)."""

    def __init__(self, model: nn.Module, roles: list[str]) -> None:
        super().__init__()
        self.model, self.roles = model, roles

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[r] for r in self.roles)


def to_onnx_bytes(model: nn.Module, spec: ModelSpec, opset: int) -> bytes:
    roles = list(spec.output_names)
    h, w = spec.input_size
    wrapper = _Outputs(model, roles).eval()
    buf = io.BytesIO()
    names = [spec.output_names[r] for r in roles]
    dynamic = {spec.input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with torch.no_grad():
        torch.onnx.export(wrapper, (torch.zeros(1, 3, h, w),), buf, input_names=[spec.input_name],
                          output_names=names, opset_version=opset, dynamic_axes=dynamic, dynamo=False)
    model.eval()  # the exporter restores the wrapper's mode onto the model; keep it in eval
    return buf.getvalue()


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, data: str | Path | None = None,
                split: str = "val", check_images: int = 8, simplify: bool = True) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` (atomically) and report the ORT-vs-PyTorch difference."""
    import onnx
    import onnxruntime as ort

    from hagrid_edge.models import load_model
    from hagrid_edge.processing import preprocess

    if opset < MIN_OPSET:
        raise HagridEdgeError(f"--opset: {opset} is below {MIN_OPSET}, which INT8 QDQ (per-channel) needs")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise HagridEdgeError(f"--out: {out} must end in .onnx")
    model, spec, _ = load_model(checkpoint)
    spec.provenance = {**spec.provenance, "checkpoint_sha256": sha256_file(checkpoint),
                       "checkpoint": Path(checkpoint).name, "exporter": f"torch {torch.__version__} opset {opset}"}
    proto = onnx.load_from_string(to_onnx_bytes(model, spec, opset))
    if simplify:
        import onnxsim

        proto, ok = onnxsim.simplify(proto)
        if not ok:
            raise HagridEdgeError(f"{checkpoint}: onnxsim could not validate the simplified graph")
    embed_in_onnx(proto, spec)
    onnx.checker.check_model(proto)
    blob = proto.SerializeToString()

    # Parity on real frames, preprocessed exactly as deployment does, batched (exercises the dynamic axis).
    frames = split_frames(data or DEFAULT_DATA, split, check_images)
    batch = np.concatenate([preprocess(f, spec)[0] for f in frames])
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    ort_out = dict(zip(names, session.run(names, {spec.input_name: batch})))  # noqa: B905 (3.8: no strict)
    with torch.no_grad():
        torch_out = model(torch.from_numpy(batch))
    diffs = {spec.output_names[r]: float(np.abs(ort_out[spec.output_names[r]] - torch_out[r].numpy()).max())
             for r in spec.output_names}
    with atomic_path(out) as tmp:
        tmp.write_bytes(blob)
    sidecar = save_sidecar(spec, out)
    return {"onnx": str(out), "sidecar": str(sidecar), "size_mb": len(blob) / 1e6, "images": len(frames),
            "max_abs_diff": diffs, "opset": opset}
