"""INT8 candidates of one model in one format, with any set of its layers kept in float.

The guard (``sensitivity``) needs only this: the layers that can be kept in float, and a candidate
artifact for a choice of them. ``OnnxCandidates`` places Q/DQ with ONNX Runtime from ranges collected
once; ``hagrid_edge.quantize.tflite_int8.TFLiteCandidates`` applies ai-edge-quantizer recipes to a float
TFLite. Both write candidates into a work folder and hand back the path and the artifact's spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import onnx

from hagrid_edge.quantize.onnx_int8 import layer_units, quantize_qdq
from hagrid_edge.spec import ModelSpec


@dataclass
class Candidate:
    path: Path
    spec: ModelSpec
    float_layers: list[str]


class Candidates(Protocol):
    target: str  # the calibrate target it makes, e.g. "onnx-int8"
    units: list[str]  # layers that can be kept in float, in graph order

    def build(self, float_layers: Sequence[str] = (), only: Sequence[str] | None = None) -> Candidate:
        """The INT8 artifact with ``float_layers`` in float (``only``: quantize just these layers)."""

    def unit_costs(self) -> dict[str, float] | None:
        """Instructions per inference each unit adds on a Pi 5 when kept in float (None: not modelled)."""


class OnnxCandidates:
    """QDQ ONNX candidates (per-channel symmetric weights, symmetric activations) from collected ranges."""

    target = "onnx-int8"

    def __init__(self, fp32: onnx.ModelProto, spec: ModelSpec, ranges, method: str, work: Path) -> None:
        self.fp32, self.spec, self.ranges, self.method, self.work = fp32, spec, ranges, method, work
        self._nodes = layer_units(fp32)  # layer -> its node and the Relu that only it feeds
        self.units = list(self._nodes)
        self._count = 0

    def model(self, float_layers: Sequence[str] = (), only: Sequence[str] | None = None) -> onnx.ModelProto:
        if only is not None:
            return quantize_qdq(self.fp32, self.ranges, self.method, only=[n for u in only for n in self._nodes[u]])
        return quantize_qdq(self.fp32, self.ranges, self.method,
                            exclude=[n for u in float_layers for n in self._nodes[u]])

    def unit_costs(self) -> None:
        """A QDQ ONNX runs on TensorRT or ONNX Runtime, whose cost the Pi model does not cover."""
        return None

    def build(self, float_layers: Sequence[str] = (), only: Sequence[str] | None = None) -> Candidate:
        self._count += 1
        path = self.work / f"onnx_candidate_{self._count}.onnx"
        onnx.save(self.model(float_layers, only), str(path))
        return Candidate(path, self.spec, list(float_layers))
