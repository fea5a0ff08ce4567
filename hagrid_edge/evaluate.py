"""Accuracy of any runnable artifact on HaGRID: COCO mAP for detectors, F1 for classifiers.

Detections come from ``hagrid_edge.pipeline`` (the deployed code path); COCO scoring is
pycocotools'. ``--task hands`` scores every box as one class ``hand``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from hagrid_edge.data.annotations import Sample
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import DETECTOR_CLASSES, HAND
from hagrid_edge.processing import Detections

TASKS = ("gestures", "hands")
# Detections below this score are not worth scoring; COCO mAP integrates over the rest.
EVAL_SCORE_THRESHOLD = 0.01


def task_classes(task: str) -> tuple[str, ...]:
    return (HAND,) if task == "hands" else DETECTOR_CLASSES


def coco_ground_truth(samples: Sequence[Sample], sizes: Sequence[tuple[int, int]], task: str) -> dict:
    """A COCO ground-truth dict for ``samples`` (image sizes as (width, height))."""
    classes = task_classes(task)
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    images, anns = [], []
    for img_id, (s, (w, h)) in enumerate(zip(samples, sizes), start=1):  # noqa: B905 (Python 3.8)
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{s.gesture}/{s.image_path.name}"})
        for box, label in zip(s.boxes_xyxy(w, h), s.labels):  # noqa: B905 (Python 3.8)
            name = HAND if task == "hands" else label
            if name not in cat_id:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": c} for c, i in cat_id.items()]}


def coco_detections(all_dets: Sequence[Detections], task: str) -> list[dict]:
    cat_id = {c: i + 1 for i, c in enumerate(task_classes(task))}
    out = []
    for img_id, dets in enumerate(all_dets, start=1):
        for box, score, label in zip(dets.boxes, dets.scores, dets.labels):  # noqa: B905 (Python 3.8)
            name = HAND if task == "hands" else label
            if name not in cat_id:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append({"image_id": img_id, "category_id": cat_id[name], "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(score)})
    return out


def _coco(gt: dict) -> COCO:
    """A pycocotools ground-truth index over the ``gt`` dict (call with stdout redirected)."""
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    return coco_gt


def coco_map(gt: dict, dets: list[dict]) -> dict:
    """COCO mAP50-95, mAP50 (percent) and per-class AP50-95 for classes that have ground truth."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco(gt)
        if not dets:
            return {"mAP50_95": 0.0, "mAP50": 0.0,
                    "per_class": {c["name"]: 0.0 for c in gt["categories"]
                                  if any(a["category_id"] == c["id"] for a in gt["annotations"])}}
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou, recall, class, area, maxdets]
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        if (p > -1).any():
            per_class[coco_gt.cats[cat]["name"]] = round(float(p[p > -1].mean()) * 100, 2)
    return {"mAP50_95": round(max(float(ev.stats[0]), 0.0) * 100, 2),
            "mAP50": round(max(float(ev.stats[1]), 0.0) * 100, 2), "per_class": per_class}


class ResampledCocoMap:
    """COCO mAP50-95 / mAP50 of one detection list over resamples of its images (repeats allowed).

    COCOeval matches detections to ground truth per image and class; which images are drawn only
    changes which of those matches are pooled into precision/recall. So the matching runs once and
    each resample reruns only the pooling (``accumulate``) over the drawn images, laid out the way
    ``COCOeval.evaluate`` lays out its per-image results (class, area range, image)."""

    def __init__(self, gt: dict, dets: list[dict]) -> None:
        self.ev: COCOeval | None = None
        if not dets:
            return
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = _coco(gt)
            self.ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
            self.ev.evaluate()
        p = self.ev.params
        self.image_ids = list(p.imgIds)  # sorted: position i is the i-th image of ``gt``
        self.per_image = np.empty(len(self.ev.evalImgs), dtype=object)
        self.per_image[:] = self.ev.evalImgs
        self.per_image = self.per_image.reshape(len(p.catIds), len(p.areaRng), len(p.imgIds))
        # Pool only what mAP50-95 / mAP50 read: every area ("all" is first) and the largest maxDets.
        self.pool_params = copy.deepcopy(p)
        self.pool_params.areaRng, self.pool_params.areaRngLbl = p.areaRng[:1], p.areaRngLbl[:1]
        self.pool_params.maxDets = p.maxDets[-1:]

    def __call__(self, images: np.ndarray) -> dict:
        """mAP50-95 and mAP50 (percent) over the images at positions ``images`` of ``gt``."""
        if self.ev is None:
            return {"mAP50_95": 0.0, "mAP50": 0.0}
        ids = [self.image_ids[i] for i in images]
        self.ev.evalImgs = list(self.per_image[:, :, images].reshape(-1))
        self.ev._paramsEval.imgIds = ids
        self.pool_params.imgIds = ids
        with contextlib.redirect_stdout(io.StringIO()):
            self.ev.accumulate(self.pool_params)
        precision = self.ev.eval["precision"][:, :, :, 0, 0]  # [iou, recall, class]

        def mean(values: np.ndarray) -> float:
            seen = values[values > -1]
            return round(max(float(seen.mean()), 0.0) * 100, 2) if seen.size else 0.0

        return {"mAP50_95": mean(precision), "mAP50": mean(precision[0])}


def run_detector(predict: Callable, samples: Sequence[Sample], progress: bool = True
                 ) -> tuple[list[Detections], list[tuple[int, int]]]:
    dets, sizes = [], []
    for s in tqdm(samples, desc="eval", unit="img", disable=not progress, leave=False):
        frame = read_rgb(s.image_path)
        sizes.append((frame.shape[1], frame.shape[0]))
        dets.append(predict(frame))
    return dets, sizes


def score_detections(samples: Sequence[Sample], sizes: Sequence[tuple[int, int]], dets: Sequence[Detections],
                     task: str) -> dict:
    """COCO mAP of one detection list per sample against the samples' boxes (``task`` classes)."""
    return coco_map(coco_ground_truth(samples, sizes, task), coco_detections(dets, task))


def detect_and_score(predict: Callable, samples: Sequence[Sample], task: str = "gestures", progress: bool = True
                     ) -> tuple[dict, list[Detections], list[tuple[int, int]]]:
    """``evaluate_detector``'s result, with the detections and image sizes it scored."""
    t0 = time.perf_counter()
    dets, sizes = run_detector(predict, samples, progress)
    result = score_detections(samples, sizes, dets, task)
    return ({"task": task, "images": len(samples), **result, "seconds": round(time.perf_counter() - t0, 2)},
            dets, sizes)


def evaluate_detector(predict: Callable, samples: Sequence[Sample], task: str = "gestures",
                      progress: bool = True) -> dict:
    return detect_and_score(predict, samples, task, progress)[0]


def f1_scores(targets: Iterable[str], predictions: Iterable[str]) -> dict:
    """Macro F1 over the target classes, accuracy, and per-class F1 (percent)."""
    t, p = list(targets), list(predictions)
    per_class = {}
    for c in sorted(set(t)):
        tp = sum(1 for a, b in zip(t, p) if a == c and b == c)  # noqa: B905 (Python 3.8)
        fp = sum(1 for a, b in zip(t, p) if a != c and b == c)  # noqa: B905 (Python 3.8)
        fn = sum(1 for a, b in zip(t, p) if a == c and b != c)  # noqa: B905 (Python 3.8)
        per_class[c] = 200.0 * tp / max(2 * tp + fp + fn, 1)
    acc = 100.0 * sum(1 for a, b in zip(t, p) if a == b) / max(len(t), 1)  # noqa: B905 (Python 3.8)
    return {"f1": round(float(np.mean(list(per_class.values()))) if per_class else 0.0, 2),
            "accuracy": round(acc, 2), "per_class": {c: round(v, 2) for c, v in per_class.items()}}


def evaluate_classifier(classifier, samples: Sequence[Sample], progress: bool = True) -> dict:
    """F1 of a classifier: a crop classifier on every annotated hand, a frame classifier per image."""
    from hagrid_edge.pipeline import CropClassifier

    t0 = time.perf_counter()
    targets, preds = [], []
    spec = classifier.spec
    for s in tqdm(samples, desc="eval", unit="img", disable=not progress, leave=False):
        frame = read_rgb(s.image_path)
        if isinstance(classifier, CropClassifier):
            ids, _ = classifier(frame, s.boxes_xyxy(frame.shape[1], frame.shape[0]))
            targets += s.labels
            preds += [spec.label(int(i)) for i in ids]
        else:
            idx, _ = classifier(frame)
            targets.append(s.gesture)
            preds.append(spec.label(idx))
    return {"task": "classify", "images": len(samples), "samples": len(targets), **f1_scores(targets, preds),
            "seconds": round(time.perf_counter() - t0, 2)}


def _mean(values: list[float], digits: int = 2) -> float | None:
    return round(float(np.mean(values)), digits) if values else None


def evaluate_landmarks(landmarker, samples: Sequence[Sample], reference=None, progress: bool = True) -> dict:
    """A hand landmark model on every annotated hand box of ``samples``.

    ``mean_point_error_px``: mean distance to the annotation's 21 points, over the hands whose
    annotation has landmarks (HaGRID v1 and v2; None when none has). ``agreement_px``: mean
    distance to the points of ``reference`` (another landmark model) on the same crops, needing no
    labels. Both also as a percentage of the hand box's long side, so hand sizes weigh alike.
    """
    from hagrid_edge.landmarks import point_errors

    t0 = time.perf_counter()
    presence: list[float] = []
    errors, errors_rel, agree, agree_rel = [], [], [], []
    for s in tqdm(samples, desc="eval", unit="img", disable=not progress, leave=False):
        frame = read_rgb(s.image_path)
        h, w = frame.shape[:2]
        boxes = s.boxes_xyxy(w, h)
        hands = landmarker(frame, boxes)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clip(1)
        presence += hands.presence.tolist()
        for i in range(len(boxes)):
            target = s.landmark_array(i)
            if target is not None:
                err = float(point_errors(hands.points[i], target * np.array([w, h], np.float32)))
                errors.append(err)
                errors_rel.append(100 * err / side[i])
        if reference is not None and len(boxes):
            dist = point_errors(hands.points, reference(frame, boxes).points)
            agree += dist.tolist()
            agree_rel += (100 * dist / side).tolist()
    return {"task": "landmarks", "images": len(samples), "hands": len(presence),
            "presence_mean": _mean(presence, 4), "annotated_hands": len(errors),
            "mean_point_error_px": _mean(errors), "mean_point_error_pct_box": _mean(errors_rel),
            "agreement_px": _mean(agree), "agreement_pct_box": _mean(agree_rel),
            "seconds": round(time.perf_counter() - t0, 2)}
