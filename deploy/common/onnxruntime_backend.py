"""ONNX Runtime adapter: CPU everywhere, CUDA / TensorRT execution providers where present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from hagrid_edge.errors import HagridEdgeError, first_line
from hagrid_edge.spec import ModelSpec

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend:
    def __init__(self, path: Path, spec: ModelSpec, threads: int | None = None, device: str = "cpu") -> None:
        if device not in _PROVIDERS:
            raise HagridEdgeError(f"--device: {device!r} is not one of {sorted(_PROVIDERS)} for ONNX Runtime")
        available = set(ort.get_available_providers())
        providers = [p for p in _PROVIDERS[device] if p in available]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types for invalid/corrupt graphs
                raise HagridEdgeError(f"{path}: ONNX Runtime cannot load it ({first_line(e)})") from None
        self.path, self.spec = path, spec
        self.name = "onnxruntime-" + self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        if spec.input_name not in names:
            raise HagridEdgeError(f"{path}: the spec's input {spec.input_name!r} is not a graph input {names}")
        outputs = {o.name for o in self.session.get_outputs()}
        missing = sorted(set(spec.output_names.values()) - outputs)
        if missing:
            raise HagridEdgeError(f"{path}: the spec names outputs {missing} the graph lacks {sorted(outputs)}")
        batch_dim = next(i for i in inputs if i.name == spec.input_name).shape[0]
        # A graph with NMS inside returns boxes without a batch index: feed it one image at a time.
        self.max_batch = batch_dim if isinstance(batch_dim, int) else (1 if spec.outputs == "nms" else None)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.spec.input_name: batch})))  # noqa: B905 (3.8: no strict)
