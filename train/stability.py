"""Label stability of a hand-crop classifier under box jitter: no labels needed, so any photos do.

For every hand a detector finds (the boxes the two-stage pipeline really feeds the classifier), the
classifier labels the box and the box moved by ``shift`` pixels left, right, up and down; a hand
whose label changes under any of the four moves counts as a flip. A classifier that flips for a
pixel of box placement also flips for the small input changes of INT8, which is what keeps a
quantized pair from holding.

    python -m hagrid_edge.train.stability --detector D.onnx --classifier A.onnx B.onnx \\
        --data ../shared/data/hagrid512-mini --split subsample
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

from hagrid_edge.data.annotations import Sample, load_split
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.images import read_rgb
from hagrid_edge.pipeline import CropClassifier, Detector

SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def _labels(classify: CropClassifier, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """HaGRID labels (a 45-class model's classes mapped through its spec), so models compare."""
    return np.array([classify.spec.label(int(i)) for i in classify(frame, boxes)[0]])


def flip_share(detector: Detector, classifiers: Sequence[CropClassifier], photos: Sequence[Sample],
               shift: float = 2.0) -> dict:
    """Per classifier: the share (percent) of detected hands whose label changes when the box moves."""
    flips, hands = np.zeros(len(classifiers)), 0
    for s in photos:
        frame = read_rgb(s.image_path)
        boxes = detector(frame).boxes
        if not len(boxes):
            continue
        hands += len(boxes)
        for k, classify in enumerate(classifiers):
            base = _labels(classify, frame, boxes)
            changed = np.zeros(len(boxes), bool)
            for dx, dy in SHIFTS:
                moved = boxes + shift * np.array([dx, dy, dx, dy], np.float32)
                changed |= _labels(classify, frame, moved) != base
            flips[k] += changed.sum()
    return {"photos": len(photos), "hands": hands, "shift_px": shift,
            "flip_percent": [round(100.0 * f / max(hands, 1), 2) for f in flips]}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detector", required=True, help="hand detector (e.g. assets/models/hand_detector.onnx)")
    p.add_argument("--classifier", nargs="+", required=True, help="hand-crop classifiers to compare")
    p.add_argument("--data", required=True, help="HaGRID data root")
    p.add_argument("--split", default="subsample", help="photos to use (not val: val chooses models)")
    p.add_argument("--min-score", type=float, default=0.3, help="detections scoring at least this")
    p.add_argument("--shift", type=float, default=2.0, help="box move in pixels")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    detector = Detector(open_backend(args.detector, threads=args.threads), args.min_score)
    classifiers = [CropClassifier(open_backend(c, threads=args.threads)) for c in args.classifier]
    result = flip_share(detector, classifiers, load_split(args.data, args.split), args.shift)
    result["classifiers"] = list(args.classifier)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
