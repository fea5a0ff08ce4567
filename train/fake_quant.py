"""Quantization-aware fine-tuning: int8 fake quantization of an ``OnnxNet`` while it trains.

Where post-training quantization cannot hold a model (its INT8 TFLite loses agreement with FP32 at
every cost the Pi 5 budget allows), the last epochs of training see the rounding the board will do:
weights per output channel, symmetric, -127..127 (what the TFLite converter writes), and every tensor
the converter quantizes per tensor, asymmetric, -128..127, over a running min / max. Gradients pass
the rounding unchanged inside the range (the straight-through estimator of ``torch.fake_quantize_*``).
Nothing of it is saved: the checkpoint and the exported ONNX stay FP32, and ``hagrid-edge calibrate``
quantizes them as it does any model, now one whose weights have learned to live with int8.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Ops whose output the converter does not quantize on its own: layout only, or fused into what follows.
_LAYOUT = ("Transpose", "Reshape", "Flatten")


class FakeQuantizer:
    """Fake quantization for one plan; a plain object, so the model's state dict stays as it was."""

    def __init__(self, plan: dict[str, Any], momentum: float = 0.1) -> None:
        self.momentum = momentum
        consumers: dict[str, list[str]] = {}
        for n in plan["nodes"]:
            for name in n["in"]:
                consumers.setdefault(name, []).append(n["op"])
        # A Conv / Gemm whose only consumer is a Relu is one fused unit: quantized after the Relu.
        self.quantized = {n["out"] for n in plan["nodes"] if n["op"] not in _LAYOUT
                          and not (n["op"] in ("Conv", "Gemm") and consumers.get(n["out"]) == ["Relu"])}
        self.ranges: dict[str, tuple[float, float]] = {}

    def activation(self, name: str, x: Tensor) -> Tensor:
        """``x`` rounded to int8 over the running range of tensor ``name`` (updated in training)."""
        if name not in self.quantized:
            return x
        with torch.no_grad():
            lo, hi = (float(v) for v in torch.aminmax(x))  # one pass over x
            if name in self.ranges:
                old_lo, old_hi = self.ranges[name]
                lo = old_lo + self.momentum * (lo - old_lo)
                hi = old_hi + self.momentum * (hi - old_hi)
            self.ranges[name] = (lo, hi)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max((hi - lo) / 255.0, 1e-8)
        zero_point = int(min(max(round(-128 - lo / scale), -128), 127))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127)

    @staticmethod
    def weight(w: Tensor) -> Tensor:
        """Per output channel, symmetric, -127..127."""
        scale = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8) / 127.0
        zeros = torch.zeros(len(w), dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale.float(), zeros, 0, -127, 127)

    def layer(self, layer: nn.Module, x: Tensor) -> Tensor:
        """A Conv2d or Linear run with its weights rounded."""
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(x, self.weight(layer.weight), layer.bias, layer.stride, layer.padding,
                            layer.dilation, layer.groups)
        return F.linear(x, self.weight(layer.weight), layer.bias)
