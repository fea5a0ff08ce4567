"""LiteRT adapter for ``.tflite`` files: ai-edge-litert, or tflite-runtime on boards that have only it.

XNNPACK is LiteRT's default CPU delegate; ``threads`` sets its thread count. Integer inputs and
outputs are passed through as the interpreter gives them: their scales live in the spec and the
shared pre/post-processing applies them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.spec import ModelSpec


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise HagridEdgeError("no TFLite runtime: pip install 'hagrid-edge[tflite]' (ai-edge-litert) "
                                  "or tflite-runtime") from None
    return Interpreter


class LiteRTBackend:
    def __init__(self, path: Path, spec: ModelSpec, threads: int | None = None, device: str = "cpu") -> None:
        if device != "cpu":
            raise HagridEdgeError(f"--device: LiteRT runs {path.name} on the CPU only, not {device!r}")
        try:
            self.interpreter = _interpreter_class()(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise HagridEdgeError(f"{path}: LiteRT cannot load it ({str(e).splitlines()[0]})") from None
        self.path, self.spec = path, spec
        self.name = "litert-cpu"
        inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
        if spec.input_name not in inputs:
            raise HagridEdgeError(f"{path}: the spec's input {spec.input_name!r} is not a model input {sorted(inputs)}")
        self._input = inputs[spec.input_name]
        self._outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        missing = sorted(set(spec.output_names.values()) - set(self._outputs))
        if missing:
            raise HagridEdgeError(f"{path}: the spec names outputs {missing} the model lacks {sorted(self._outputs)}")
        self.max_batch = int(self._input["shape"][0])

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.dtype != self._input["dtype"]:
            raise HagridEdgeError(f"{self.path}: input is {self._input['dtype'].__name__}, got {batch.dtype}; "
                                  "the spec's input_dtype does not match the model")
        if batch.shape[0] != self.max_batch:
            raise HagridEdgeError(f"{self.path}: batch of {batch.shape[0]}, the model takes {self.max_batch}")
        self.interpreter.set_tensor(self._input["index"], batch)
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(idx).copy() for name, idx in self._outputs.items()}
