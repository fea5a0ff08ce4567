"""The accuracy guard's metric: an artifact scored on real HaGRID images through the deployed pipeline.

Detectors get COCO mAP50-95 (``hands`` task for single-class hand detectors, ``gestures`` otherwise),
classifiers macro F1; both come from ``hagrid_edge.evaluate``, the same code as ``hagrid-edge eval``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from hagrid_edge.data.annotations import Sample, load_split
from hagrid_edge.spec import ModelSpec

GUARD_SPLIT = "val"


@dataclass
class Score:
    metric: str  # "mAP50_95" or "f1"
    value: float  # percent
    secondary: dict[str, float]  # mAP50 for detectors, accuracy for classifiers
    task: str
    images: int
    seconds: float

    def as_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, **self.secondary, "task": self.task,
                "images": self.images, "seconds": self.seconds}


def guard_task(spec: ModelSpec) -> str:
    if spec.task == "classifier":
        return "classify"
    return "hands" if len(spec.classes) == 1 else "gestures"


class Scorer:
    """Scores artifacts of one spec on one split (samples loaded once)."""

    def __init__(self, data_root: str | Path, spec: ModelSpec, split: str = GUARD_SPLIT,
                 limit: int | None = None, threads: int | None = None) -> None:
        samples: list[Sample] = load_split(data_root, split)
        self.samples = samples[:limit] if limit else samples
        self.spec, self.split, self.threads = spec, split, threads
        self.task = guard_task(spec)

    def score(self, artifact: str | Path, spec: ModelSpec | None = None) -> Score:
        from hagrid_edge.deploy.common.backend import open_backend
        from hagrid_edge.evaluate import EVAL_SCORE_THRESHOLD, evaluate_classifier, evaluate_detector
        from hagrid_edge.pipeline import CropClassifier, Detector, FrameClassifier

        backend = open_backend(artifact, spec=spec or self.spec, threads=self.threads)
        if self.task == "classify":
            clf = CropClassifier(backend) if backend.spec.crop else FrameClassifier(backend)
            r = evaluate_classifier(clf, self.samples, progress=False)
            return Score("f1", r["f1"], {"accuracy": r["accuracy"]}, self.task, r["images"], r["seconds"])
        r = evaluate_detector(Detector(backend, EVAL_SCORE_THRESHOLD), self.samples, self.task, progress=False)
        return Score("mAP50_95", r["mAP50_95"], {"mAP50": r["mAP50"]}, self.task, r["images"], r["seconds"])

    def score_model(self, model: onnx.ModelProto) -> Score:
        """Score an in-memory ONNX model (written to a temporary file for the runtime)."""
        with tempfile.TemporaryDirectory(prefix="hagrid-guard.") as tmp:
            path = Path(tmp) / "candidate.onnx"
            onnx.save(model, str(path))
            return self.score(path)
