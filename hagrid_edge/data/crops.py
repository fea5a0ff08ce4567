"""Hand crops for training hand-crop classifiers: crop folders and the boxes of annotated photos.

Two sources, one sample type. A crop folder (``hagrid-crops``: ``<part>/<class>/<image>.jpg``, each
image one hand cut at its box) gives whole images; an annotated split gives a photo and one hand
box in it, cut at load time. Both go through ``processing.crop_box`` and ``resize_frame``, the code
the pipeline crops with, so training sees hands exactly as inference does (up to the jitter that
imitates a detector's boxes). A third source is a hand detector's own boxes on the photos, the boxes
the two-stage pipeline really feeds the classifier; a crop no annotation names (a detection matching
no hand, a folder of mixed classes) has no label and trains on a teacher's target only. Unreadable
images are found when the sample list is built, skipped and counted, so an epoch never stops on a
bad file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hagrid_edge.data.annotations import Sample
from hagrid_edge.errors import DataError
from hagrid_edge.images import read_rgb
from hagrid_edge.processing import Detections, box_iou, crop_box, resize_frame
from hagrid_edge.spec import ModelSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class CropSample:
    image_path: Path
    label: str | None  # None: no annotation names the hand; a teacher's target only
    box: tuple[float, float, float, float] | None = None  # xyxy, fractions of the frame; None: the whole image


@dataclass
class CropSet:
    samples: list[CropSample]
    unreadable: list[Path]  # skipped
    unknown_classes: list[str]  # folders whose class the model does not have: skipped, or kept unlabelled

    def summary(self) -> str:
        by_class: dict[str | None, int] = {}
        for s in self.samples:
            by_class[s.label] = by_class.get(s.label, 0) + 1
        parts = [f"{len(self.samples)} crops in {len(by_class) - (None in by_class)} classes"]
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable images skipped (first: {self.unreadable[0]})")
        unlabelled = sum(s.label is None for s in self.samples)
        if self.unknown_classes and unlabelled:
            parts.append(f"{unlabelled} crops of folders of classes the model lacks kept unlabelled: "
                         f"{', '.join(self.unknown_classes)}")
        elif self.unknown_classes:
            parts.append(f"folders of classes the model lacks skipped: {', '.join(self.unknown_classes)}")
        return "; ".join(parts)


def _readable(path: Path) -> bool:
    try:
        image = read_rgb(path)
    except Exception:  # a damaged or non-image file: decoders raise many kinds
        return False
    return image.ndim == 3 and min(image.shape[:2]) > 0


def folder_crops(root: str | Path, classes: Sequence[str], keep_unknown: bool = False) -> CropSet:
    """Every readable crop under ``root/<part>/<class>/`` whose class is in ``classes``; with
    ``keep_unknown`` the crops of other folders too, unlabelled (a teacher labels them)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no crop folder")
    samples, unreadable, unknown = [], [], set()
    for class_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        label = class_dir.name if class_dir.name in classes else None
        if label is None:
            unknown.add(class_dir.name)
            if not keep_unknown:
                continue
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if _readable(path):
                samples.append(CropSample(path, label))
            else:
                unreadable.append(path)
    if not any(s.label for s in samples):
        raise DataError(f"{root}: no readable crops of the model's classes ({', '.join(classes[:4])}, ...)")
    return CropSet(samples, unreadable, sorted(unknown))


def photo_crops(samples: Sequence[Sample], classes: Sequence[str]) -> list[CropSample]:
    """One crop sample per annotated hand whose label is in ``classes``."""
    return [CropSample(s.image_path, label, tuple(float(v) for v in box))
            for s in samples for box, label in zip(s.boxes_xyxy(1, 1), s.labels)  # noqa: B905 (Python 3.8)
            if label in classes]


def detected_crops(photos: Sequence[Sample], detect: Callable[[np.ndarray], Detections],
                   classes: Sequence[str], min_score: float, min_iou: float = 0.5) -> list[CropSample]:
    """One crop sample per detection of ``detect`` scoring ``min_score`` or more on each photo: the
    label of the annotated hand it overlaps by ``min_iou`` (IoU) if there is one, else none."""
    out = []
    for s in photos:
        frame = read_rgb(s.image_path)
        fh, fw = frame.shape[:2]
        dets = detect(frame)
        boxes = dets.boxes[dets.scores >= min_score]
        truth = s.boxes_xyxy(fw, fh)
        iou = box_iou(boxes, truth) if len(boxes) and len(truth) else np.zeros((len(boxes), 0))
        scale = np.array([fw, fh, fw, fh], np.float32)
        for box, row in zip(boxes, iou):  # noqa: B905 (Python 3.8)
            best = int(row.argmax()) if row.size else -1
            label = s.labels[best] if best >= 0 and row[best] >= min_iou else None
            out.append(CropSample(s.image_path, label if label in classes else None,
                                  tuple(float(v) for v in box / scale)))
    return out


def pad_square(image: np.ndarray, pad_value: int) -> np.ndarray:
    """A hand cut at its box, centred in a square of ``pad_value``: where a square crop of the photo
    would show the scene beside the hand, the cut crop has nothing to show."""
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.full((side, side, 3), pad_value, np.uint8)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0:y0 + h, x0:x0 + w] = image
    return out


def source_image(sample: CropSample, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """The image a crop sample is cut from and its box there (xyxy pixels, float32)."""
    frame = read_rgb(sample.image_path)
    if sample.box is None and (spec.crop or {}).get("kind") == "square":
        frame = pad_square(frame, spec.pad_value)
    fh, fw = frame.shape[:2]
    box = sample.box if sample.box is not None else (0, 0, 1, 1)
    return frame, np.array(box, np.float32) * np.array([fw, fh, fw, fh], np.float32)


class CropDataset(Dataset):
    """Crop samples as the classifier's input (uint8 CHW) and ``gesture`` (index into the spec's
    classes; -1 unlabelled), with ``soft`` (a teacher's class probabilities per sample) when given.

    Augmentation (training only): the box moved and resized by up to ``jitter`` of its size (a
    detector's boxes are not the annotator's), horizontal flip, brightness/contrast jitter.
    """

    def __init__(self, samples: Sequence[CropSample], spec: ModelSpec, train: bool = True, seed: int = 0,
                 jitter: float = 0.1, hflip: float = 0.5, color: float = 0.3, soft: np.ndarray | None = None
                 ) -> None:
        if spec.crop is None:
            raise DataError("a crop dataset feeds hand-crop classifiers; the spec has no crop")
        self.samples, self.spec, self.train, self.seed = list(samples), spec, train, seed
        if soft is not None and soft.shape != (len(self.samples), len(spec.classes)):
            raise DataError(f"teacher targets of shape {soft.shape} for {len(self.samples)} crops "
                            f"of {len(spec.classes)} classes")
        self.soft = None if soft is None else torch.from_numpy(np.asarray(soft, np.float32))
        self.jitter, self.hflip, self.color = jitter, hflip, color
        self.class_index = {c: i for i, c in enumerate(spec.classes)}
        self.epoch = 0
        if not self.samples:
            raise DataError("no crops to train on")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        frame, box = source_image(s, self.spec)
        fh, fw = frame.shape[:2]
        if self.train and self.jitter > 0:
            size = np.tile(box[2:] - box[:2], 2)
            box = box + rng.uniform(-self.jitter, self.jitter, 4).astype(np.float32) * size
        x1, y1, x2, y2 = crop_box(box, fw, fh, self.spec.crop)
        image = resize_frame(frame[y1:y2, x1:x2], self.spec)[0]
        if self.train:
            if rng.random() < self.hflip:
                image = image[:, ::-1]
            if self.color > 0:
                x = image.astype(np.float32) * rng.uniform(1 - self.color, 1 + self.color)
                mean = x.mean()
                image = ((x - mean) * rng.uniform(1 - self.color, 1 + self.color) + mean).clip(0, 255).astype(np.uint8)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        target = {"gesture": torch.tensor(self.class_index.get(s.label, -1)), "index": torch.tensor(index)}
        if self.soft is not None:
            target["soft"] = self.soft[index]
        return tensor, target
