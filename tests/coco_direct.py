"""COCO mAP straight from pycocotools, apart from hagrid_edge's own scoring.

The ground truth is read from HaGRID's annotation files with ``json`` (normalised ``[x, y, w, h]``
boxes scaled by the image size that Pillow reads), the classes are written out here, and the COCO
dicts are built here; nothing of ``hagrid_edge.evaluate`` or ``hagrid_edge.data`` is used. A test
compares the project's figures with these: a golden number copied from the code under test would only
compare that code with itself.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# HaGRID's 18 gestures and no_gesture: the classes a gesture detector is scored on.
GESTURE_CLASSES = ("call", "dislike", "fist", "four", "like", "mute", "ok", "one", "palm", "peace",
                   "peace_inverted", "rock", "stop", "stop_inverted", "three", "three2", "two_up",
                   "two_up_inverted", "no_gesture")


def coco_eval(images: list[dict], gt_boxes: list[tuple[int, str, list[float]]],
              det_boxes: list[tuple[int, str, list[float], float]], classes: tuple[str, ...]) -> dict[str, float]:
    """mAP50-95 and mAP50 (percent) of pixel ``[x, y, w, h]`` boxes: GT (image, class, box), detections
    (image, class, box, score); classes outside ``classes`` are not scored."""
    cat = {c: i + 1 for i, c in enumerate(classes)}
    gt = {"images": images, "categories": [{"id": i, "name": c} for c, i in cat.items()],
          "annotations": [{"id": k + 1, "image_id": img, "category_id": cat[c], "bbox": box,
                           "area": box[2] * box[3], "iscrowd": 0}
                          for k, (img, c, box) in enumerate(b for b in gt_boxes if b[1] in cat)]}
    dets = [{"image_id": img, "category_id": cat[c], "bbox": box, "score": score}
            for img, c, box, score in det_boxes if c in cat]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP50_95": round(float(ev.stats[0]) * 100, 2), "mAP50": round(float(ev.stats[1]) * 100, 2)}


def hagrid_map(root: Path, split: str, photos: list[tuple[str, str, Path]], detections: list, task: str
               ) -> dict[str, float]:
    """COCO mAP of ``detections`` (per photo: boxes x1, y1, x2, y2 in pixels, scores, labels) on ``photos``
    ((gesture file, image id, image path), in the same order), against ``root``'s annotation files."""
    files: dict[str, dict] = {}
    images, gt_boxes, det_boxes = [], [], []
    for img, ((gesture, image_id, path), dets) in enumerate(zip(photos, detections, strict=True), start=1):
        if gesture not in files:
            files[gesture] = json.loads((root / "annotations" / split / f"{gesture}.json").read_text())
        entry = files[gesture][image_id]
        with Image.open(path) as im:
            w, h = im.size
        images.append({"id": img, "width": w, "height": h})
        for (x, y, bw, bh), label in zip(entry["bboxes"], entry["labels"], strict=True):
            gt_boxes.append((img, "hand" if task == "hands" else label, [x * w, y * h, bw * w, bh * h]))
        for (x1, y1, x2, y2), score, label in zip(dets.boxes, dets.scores, dets.labels, strict=True):
            det_boxes.append((img, "hand" if task == "hands" else label,
                              [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], float(score)))
    return coco_eval(images, gt_boxes, det_boxes, ("hand",) if task == "hands" else GESTURE_CLASSES)
