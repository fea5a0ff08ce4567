"""The one-stage gesture detector as the training code builds it, and real photos in its input (for the
distillation and quantization-aware tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hagrid_edge.data.annotations import Sample
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import DETECTOR_CLASSES
from hagrid_edge.models import model_spec, onnx_model
from hagrid_edge.processing import preprocess
from hagrid_edge.spec import ModelSpec


def one_stage_detector(onnx: Path) -> tuple[torch.nn.Module, ModelSpec]:
    """``onnx`` as a trainable ``onnx_ssd`` detector of the 18 gestures and no_gesture, with its spec."""
    model, cfg, _ = onnx_model("onnx_ssd", onnx, list(DETECTOR_CLASSES))
    return model, model_spec(cfg, model)


def photo_batch(samples: Sequence[Sample], spec: ModelSpec) -> torch.Tensor:
    """The photos of ``samples`` letterboxed and normalised into ``spec``'s input, as one batch."""
    return torch.from_numpy(np.concatenate([preprocess(read_rgb(s.image_path), spec)[0] for s in samples]))
