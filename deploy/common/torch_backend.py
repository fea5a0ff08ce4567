"""PyTorch adapter: run a hagrid-edge training checkpoint (``.pt``) like any other artifact.

The model's forward returns the raw head (SSD ``bbox_regression`` / ``cls_logits``, classifier
logits), the same tensors the exported ONNX has, so ``hagrid_edge.pipeline`` decodes both alike.
Training evaluates through ``TorchBackend.from_model``: the numbers it logs are ``hagrid-edge eval``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.spec import ModelSpec


class TorchBackend:
    max_batch: int | None = None

    def __init__(self, path: Path, spec: ModelSpec, threads: int | None = None, device: str = "cpu") -> None:
        from hagrid_edge.models import load_model

        if device not in ("cpu", "cuda"):
            raise HagridEdgeError(f"--device: {device!r} is not cpu or cuda for PyTorch checkpoints")
        if device == "cuda" and not torch.cuda.is_available():
            raise HagridEdgeError("--device cuda: PyTorch sees no CUDA device here")
        if threads:
            torch.set_num_threads(threads)
        model, _, _ = load_model(path)
        self._init(model, spec, torch.device(device), Path(path))

    @classmethod
    def from_model(cls, model: nn.Module, spec: ModelSpec, device: torch.device | str = "cpu") -> TorchBackend:
        """Wrap an in-memory model (e.g. during training) without a file."""
        self = cls.__new__(cls)
        self._init(model, spec, torch.device(device), Path("<in-memory>"))
        return self

    def _init(self, model: nn.Module, spec: ModelSpec, device: torch.device, path: Path) -> None:
        self.model, self.spec, self.device, self.path = model, spec, device, path
        self.name = f"pytorch-{device.type}"

    @torch.no_grad()
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        finally:
            self.model.train(was_training)
        names = self.spec.output_names
        return {names[role]: v.float().cpu().numpy() for role, v in out.items() if role in names}
