"""The accuracy guard's measures: an artifact run through the deployed pipeline on one set of photos.

Two figures per artifact, both from the same detections: COCO mAP against the annotations (the
``hands`` task for single-class hand detectors, ``gestures`` for gesture detectors and detector +
classifier pairs; macro F1 for a crop classifier on its own) and agreement with the FP32 model it
was made from (``hagrid_edge.agreement``), which needs no labels. Detections and COCO scoring are
``hagrid_edge.evaluate``'s, the same code as ``hagrid-edge eval``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hagrid_edge.agreement import as_samples, detection_agreement
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.evaluate import (
    EVAL_SCORE_THRESHOLD,
    evaluate_classifier,
    run_detector,
    score_detections,
)
from hagrid_edge.pipeline import CropClassifier, Detector, FrameClassifier, TwoStage
from hagrid_edge.quantize.photo_sets import PhotoSet
from hagrid_edge.spec import ModelSpec


@dataclass
class Score:
    metric: str  # "mAP50_95" or "f1"
    value: float  # percent, against the annotations
    secondary: dict[str, float]  # mAP50 for detectors, accuracy for classifiers
    task: str
    images: int
    seconds: float
    photos: str = ""  # the photo set it was measured on
    agreement: dict[str, float] = field(default_factory=dict)  # against the FP32 model (detectors, pairs)

    def as_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, **self.secondary, "task": self.task,
                "photos": self.photos, "images": self.images, "agreement": self.agreement,
                "seconds": self.seconds}


def guard_task(spec: ModelSpec) -> str:
    """What a model on its own is scored on (a classifier in a pair is scored on ``gestures``)."""
    if spec.task == "classifier":
        return "classify"
    return "hands" if len(spec.classes) == 1 else "gestures"


# artifact path + its spec -> what ``evaluate`` runs (a Detector, a TwoStage or a CropClassifier)
PipelineFactory = Callable[[Path, ModelSpec], object]


def detector_pipeline(threads: int | None) -> PipelineFactory:
    """The artifact as a detector on its own, at the evaluation threshold."""
    def make(path: Path, spec: ModelSpec):
        return Detector(open_backend(path, spec=spec, threads=threads), EVAL_SCORE_THRESHOLD)
    return make


def paired_pipeline(threads: int | None, detector: tuple[Path, ModelSpec] | None = None,
                    classifier: tuple[Path, ModelSpec] | None = None) -> PipelineFactory:
    """The two-stage pipeline that runs, with one stage fixed (``detector`` or ``classifier``: path, spec)
    and the artifact as the other."""
    def make(path: Path, spec: ModelSpec):
        det_path, det_spec = detector or (path, spec)
        cls_path, cls_spec = classifier or (path, spec)
        det = Detector(open_backend(det_path, spec=det_spec, threads=threads), EVAL_SCORE_THRESHOLD)
        return TwoStage(det, CropClassifier(open_backend(cls_path, spec=cls_spec, threads=threads)))
    return make


def classifier_alone(threads: int | None) -> PipelineFactory:
    def make(path: Path, spec: ModelSpec):
        backend = open_backend(path, spec=spec, threads=threads)
        return CropClassifier(backend) if backend.spec.crop else FrameClassifier(backend)
    return make


def fp32_truth(photos: PhotoSet, make: PipelineFactory, path: Path, spec: ModelSpec) -> list:
    """The FP32 pipeline's detections at its own operating threshold (the spec's score threshold, what
    ``run`` shows), as ground truth for agreement."""
    pipe = make(path, spec)
    getattr(pipe, "detector", pipe).score_threshold = None
    dets, sizes = run_detector(pipe, photos.samples, progress=False)
    return as_samples(photos.samples, dets, sizes, 0.0)


class Scorer:
    """Scores artifacts on one photo set: against the annotations of its labelled photos and, given the
    FP32 ``truth`` (``fp32_truth``), against the FP32 model on every photo."""

    def __init__(self, photos: PhotoSet, task: str, make: PipelineFactory, truth: list | None = None) -> None:
        self.photos, self.task, self.make, self.truth = photos, task, make, truth

    def score(self, path: Path, spec: ModelSpec) -> Score:
        pipe = self.make(Path(path), spec)
        samples = self.photos.samples
        if self.task == "classify":
            r = evaluate_classifier(pipe, self.photos.labelled_samples(), progress=False)
            return Score("f1", r["f1"], {"accuracy": r["accuracy"]}, self.task, r["images"], r["seconds"],
                         self.photos.name)
        t0 = time.perf_counter()
        dets, sizes = run_detector(pipe, samples, progress=False)
        idx = [k for k, s in enumerate(samples) if self.photos.labelled is None or s.image_id in self.photos.labelled]
        labelled = [samples[k] for k in idx]
        r = score_detections(labelled, [sizes[k] for k in idx], [dets[k] for k in idx], self.task)
        agreement = {}
        if self.truth is not None:
            a = detection_agreement(self.truth, dets, sizes, self.task)
            agreement = {"mAP50_95": a["mAP50_95"], "mAP50": a["mAP50"], "images": a["images"],
                         "fp32_boxes": a["boxes"]}
        return Score("mAP50_95", r["mAP50_95"], {"mAP50": r["mAP50"]}, self.task, len(labelled),
                     round(time.perf_counter() - t0, 2), self.photos.name, agreement)
