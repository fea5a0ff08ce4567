"""Agreement with the FP32 model: how far a quantized artifact moves from the model it was made from.

The FP32 model's own detections at its operating threshold are the ground truth and the candidate's
detections (at the evaluation threshold) are scored against them with the same COCO code as
``hagrid-edge eval``. It needs no labels, so it can use every photo there is, and it does not mix
the annotations' noise into a comparison of two models. An FP32 model agrees with itself at 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hagrid_edge.data.annotations import Sample
from hagrid_edge.evaluate import score_detections
from hagrid_edge.processing import Detections


def as_samples(samples: Sequence[Sample], dets: Sequence[Detections], sizes: Sequence[tuple[int, int]],
               min_score: float) -> list[Sample]:
    """``samples`` with their boxes and labels replaced by the detections scoring at least ``min_score``."""
    out = []
    for k, s in enumerate(samples):
        d, (w, h) = dets[k], sizes[k]
        keep = d.scores >= min_score
        b = np.asarray(d.boxes, np.float32)[keep].reshape(-1, 4)
        xywh = np.stack([b[:, 0] / w, b[:, 1] / h, (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=1)
        labels = [d.labels[i] for i in np.flatnonzero(keep)]
        out.append(Sample(s.image_id, s.gesture, s.image_path, xywh, labels, s.user_id, source="fp32"))
    return out


def detection_agreement(reference: Sequence[Sample], candidate: Sequence[Detections],
                        sizes: Sequence[tuple[int, int]], task: str) -> dict:
    """COCO mAP50-95 / mAP50 (percent) of ``candidate`` against the FP32 detections in ``reference``."""
    result = score_detections(reference, sizes, candidate, task)
    boxes = sum(len(s.labels) for s in reference)
    return {"mAP50_95": result["mAP50_95"], "mAP50": result["mAP50"], "images": len(reference), "boxes": boxes}

