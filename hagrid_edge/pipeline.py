"""Frame -> gestures: a detector alone, or a hand detector followed by a hand-crop classifier.

Every consumer (``run``, ``eval``, ``bench``, calibration checks) goes through these classes, so a
model is scored exactly as it is deployed. Each call records per-stage times in ``last_times``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hagrid_edge.deploy.common.backend import Backend, open_backend
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.processing import (
    Detections,
    crop_inputs,
    postprocess_classifier,
    postprocess_detector,
    preprocess,
)


@dataclass
class StageTimes:
    """Seconds spent in each stage of the last frame."""

    pre: float = 0.0
    infer: float = 0.0
    post: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.pre + self.infer + self.post + sum(self.extra.values())


def _infer_batched(backend: Backend, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``batch`` in chunks the backend accepts; concatenates per-row outputs."""
    limit = backend.max_batch
    if limit is None or len(batch) <= limit:
        return backend.infer(batch)
    parts = [backend.infer(batch[i:i + limit]) for i in range(0, len(batch), limit)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Detector:
    """A detector artifact: frame -> Detections in frame pixels."""

    def __init__(self, backend: Backend, score_threshold: float | None = None) -> None:
        if backend.spec.task != "detector":
            raise HagridEdgeError(f"{backend.path}: expected a detector, the spec says {backend.spec.task}")
        self.backend, self.spec = backend, backend.spec
        self.score_threshold = score_threshold
        self.last_times = StageTimes()

    def __call__(self, frame: np.ndarray) -> Detections:
        t0 = time.perf_counter()
        x, geo = preprocess(frame, self.spec)
        t1 = time.perf_counter()
        out = self.backend.infer(x)
        t2 = time.perf_counter()
        dets = postprocess_detector(out, self.spec, geo, self.score_threshold)
        t3 = time.perf_counter()
        self.last_times = StageTimes(t1 - t0, t2 - t1, t3 - t2)
        return dets


class CropClassifier:
    """A hand-crop classifier artifact: frame + hand boxes -> (class ids, probabilities)."""

    def __init__(self, backend: Backend) -> None:
        spec = backend.spec
        if spec.task != "classifier":
            raise HagridEdgeError(f"{backend.path}: expected a classifier, the spec says {spec.task}")
        self.backend, self.spec = backend, spec
        self.last_times = StageTimes()

    def __call__(self, frame: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        x = crop_inputs(frame, boxes, self.spec)
        t1 = time.perf_counter()
        out = _infer_batched(self.backend, x) if len(x) else None
        t2 = time.perf_counter()
        ids, probs = postprocess_classifier(out, self.spec) if out is not None else (
            np.zeros(0, np.int64), np.zeros(0, np.float32))
        t3 = time.perf_counter()
        self.last_times = StageTimes(t1 - t0, t2 - t1, t3 - t2)
        return ids, probs


class FrameClassifier:
    """A full-frame classifier artifact: frame -> (class id, probability)."""

    def __init__(self, backend: Backend) -> None:
        spec = backend.spec
        if spec.task != "classifier" or spec.crop is not None:
            raise HagridEdgeError(f"{backend.path}: expected a full-frame classifier")
        self.backend, self.spec = backend, spec
        self.last_times = StageTimes()

    def __call__(self, frame: np.ndarray) -> tuple[int, float]:
        t0 = time.perf_counter()
        x, _ = preprocess(frame, self.spec)
        t1 = time.perf_counter()
        out = self.backend.infer(x)
        t2 = time.perf_counter()
        ids, probs = postprocess_classifier(out, self.spec)
        t3 = time.perf_counter()
        self.last_times = StageTimes(t1 - t0, t2 - t1, t3 - t2)
        return int(ids[0]), float(probs[0])


class TwoStage:
    """Hand detector, then a crop classifier on every hand: gesture detections like a one-stage detector.

    The detection score is the detector's hand score times the classifier's probability, so the
    ranking used by mAP reflects both stages.
    """

    def __init__(self, detector: Detector, classifier: CropClassifier) -> None:
        self.detector, self.classifier = detector, classifier
        self.spec = detector.spec
        self.last_times = StageTimes()

    def __call__(self, frame: np.ndarray) -> Detections:
        hands = self.detector(frame)
        ids, probs = self.classifier(frame, hands.boxes)
        d, c = self.detector.last_times, self.classifier.last_times
        self.last_times = StageTimes(d.pre + c.pre, d.infer + c.infer, d.post + c.post)
        labels = [self.classifier.spec.label(int(i)) for i in ids]
        return Detections(hands.boxes, hands.scores * probs, ids, labels)


def load_pipeline(model: str | Path, classifier: str | Path | None = None, spec_file: str | Path | None = None,
                  classifier_spec_file: str | Path | None = None, threads: int | None = None,
                  score_threshold: float | None = None, device: str = "cpu") -> Detector | TwoStage:
    """The detection pipeline for ``model`` (and ``classifier`` for two-stage)."""
    det = Detector(open_backend(model, spec_file=spec_file, threads=threads, device=device), score_threshold)
    if classifier is None:
        return det
    cls = CropClassifier(open_backend(classifier, spec_file=classifier_spec_file, threads=threads, device=device))
    return TwoStage(det, cls)
