"""The one table of model artifact formats: file suffixes, the adapter that runs them, its extra.

``deploy.common.backend.BACKENDS`` (which adapter opens a file), ``benchmarks.formats.FORMATS``
(what the bench reports about it) and ``quantize.orchestrator.CHECKPOINTS`` (what calibrate exports
first) are all read from here, so a suffix one part accepts, every part accepts. Light on purpose:
no runtime is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ArtifactFormat:
    name: str
    suffixes: tuple[str, ...]
    backend: str  # "module:Class" of the adapter, in the installed hagrid_edge package
    extra: str  # pip extra that installs its runtime ("" for the core install)
    runtime: str  # the distribution whose version a benchmark report records
    checkpoint: bool = False  # a training checkpoint (calibrate exports it to ONNX first)


FORMATS = (
    ArtifactFormat("ONNX", (".onnx",), "hagrid_edge.deploy.common.onnxruntime_backend:OnnxRuntimeBackend", "",
                   "onnxruntime"),
    ArtifactFormat("TFLite", (".tflite",), "hagrid_edge.deploy.rpi.litert_backend:LiteRTBackend", "tflite",
                   "ai-edge-litert"),
    # TensorRT and LiteRT adapters say themselves where their runtime comes from (JetPack's apt, a wheel).
    ArtifactFormat("TensorRT engine", (".engine", ".trt", ".plan"),
                   "hagrid_edge.deploy.jetson.tensorrt_backend:TensorRTBackend", "jetson", "tensorrt"),
    ArtifactFormat("PyTorch checkpoint", (".pt", ".pth"), "hagrid_edge.deploy.common.torch_backend:TorchBackend",
                   "train", "torch", checkpoint=True),
)
BY_SUFFIX = {suffix: fmt for fmt in FORMATS for suffix in fmt.suffixes}
CHECKPOINT_SUFFIXES = tuple(s for fmt in FORMATS if fmt.checkpoint for s in fmt.suffixes)


def artifact_format(path: str | Path) -> ArtifactFormat | None:
    """The format of ``path`` by its suffix, or None for a file no part of hagrid-edge runs."""
    return BY_SUFFIX.get(Path(path).suffix.lower())
