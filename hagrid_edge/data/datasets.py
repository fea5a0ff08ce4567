"""torch Datasets over HaGRID samples, shared by training, calibration and evaluation.

Frames are letterboxed to the model input with ``hagrid_edge.processing`` (the same geometry and
resize that inference uses) and returned as ``uint8`` CHW tensors; normalisation to the spec's
mean/std happens on the device (``normalize``), once per batch. Boxes are mapped with the same
``Geometry`` as the pixels, so the targets sit exactly where the model sees the hands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hagrid_edge.data.annotations import Sample
from hagrid_edge.errors import DataError
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import HAND, LEADING_HANDS
from hagrid_edge.processing import resize_frame
from hagrid_edge.spec import ModelSpec

# (frame, boxes xyxy in frame pixels, rng) -> (frame, boxes, indices of the boxes kept, flipped)
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray, bool]]


def normalize(images: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 NCHW RGB batch -> the model's float input, exactly as ``processing.to_tensor`` does it."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


class _HagridDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], spec: ModelSpec, augment: Augment | None, seed: int,
                 what: str) -> None:
        if spec.layout != "NCHW" or spec.color != "RGB":
            raise DataError(f"datasets feed NCHW RGB models; the spec says {spec.layout} {spec.color}")
        self.samples, self.spec, self.augment, self.seed = list(samples), spec, augment, seed
        self.epoch = 0
        if not self.samples:
            raise DataError(f"no samples for the {what} dataset (empty split or no sample with a known class)")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations are drawn from (seed, epoch, index): reproducible, and different each epoch."""
        self.epoch = epoch

    def _load(self, index: int) -> tuple[Sample, np.ndarray, np.ndarray, np.ndarray, bool]:
        s = self.samples[index]
        frame = read_rgb(s.image_path)
        boxes = s.boxes_xyxy(frame.shape[1], frame.shape[0])
        kept, flipped = np.arange(len(boxes)), False
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            frame, boxes, kept, flipped = self.augment(frame, boxes, rng)
        return s, frame, boxes, kept, flipped

    def _letterbox(self, frame: np.ndarray, boxes: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        image, geo = resize_frame(frame, self.spec)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), geo.to_input(boxes)


class DetectionDataset(_HagridDataset):
    """Letterboxed frame + target ``boxes`` (xyxy, input pixels) and ``labels`` (1-based; 0 is background).

    A one-class ``hand`` spec turns every box into a hand; otherwise boxes whose label the model
    does not know are left out (and samples with no known label at all are skipped).
    """

    def __init__(self, samples: Sequence[Sample], spec: ModelSpec, augment: Augment | None = None,
                 seed: int = 0) -> None:
        self.hands = list(spec.classes) == [HAND]
        self.class_index = {c: i + 1 for i, c in enumerate(spec.classes)}
        usable = [s for s in samples if self.hands or any(lb in self.class_index for lb in s.labels)]
        super().__init__(usable, spec, augment, seed, "detection")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s, frame, boxes, kept, _ = self._load(index)
        labels = [HAND if self.hands else s.labels[k] for k in kept]
        known = [i for i, lb in enumerate(labels) if lb in self.class_index]
        image, boxes = self._letterbox(frame, boxes[known])
        target = {"boxes": torch.from_numpy(boxes.reshape(-1, 4)),
                  "labels": torch.tensor([self.class_index[labels[i]] for i in known], dtype=torch.int64),
                  "index": torch.tensor(index)}
        return image, target


class ClassificationDataset(_HagridDataset):
    """Letterboxed full frame + ``gesture`` (index into the spec's classes) and ``leading_hand``
    (0 left, 1 right, -1 where the annotation has none; a horizontal flip swaps left and right)."""

    def __init__(self, samples: Sequence[Sample], spec: ModelSpec, augment: Augment | None = None,
                 seed: int = 0) -> None:
        self.class_index = {c: i for i, c in enumerate(spec.classes)}
        super().__init__([s for s in samples if s.gesture in self.class_index], spec, augment, seed, "classification")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s, frame, boxes, _, flipped = self._load(index)
        image, _ = self._letterbox(frame, boxes)
        hand = -1
        if s.leading_hand in LEADING_HANDS:
            hand = LEADING_HANDS.index(s.leading_hand)
            if flipped:
                hand = 1 - hand
        return image, {"gesture": torch.tensor(self.class_index[s.gesture]), "leading_hand": torch.tensor(hand),
                       "index": torch.tensor(index)}


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack the images (all of the model's input size); keep targets as a list (box counts differ)."""
    images, targets = zip(*batch)  # noqa: B905 (pairs)
    return torch.stack(images), list(targets)
