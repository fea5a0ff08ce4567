"""What another OpenCV costs: the same model and photos under this interpreter's cv2, against a reference.

The detector's input is made by OpenCV (decode, then the fixed-point bilinear resize); releases differ
in the bytes they produce, so the lock holds one OpenCV on every platform. This measures a user's
other release: a digest of every model input (equal digests: bit-identical inputs), mAP against the
annotations, and agreement with the reference run's detections at the model's operating threshold.

Run it once with the locked OpenCV (``--save-truth``), then under each other OpenCV (``--truth``):
    python benchmarks/bench_opencv.py --model M.tflite --task hands --data ROOT --save-truth ref.json
    PYTHONPATH=/tmp/cv51 python benchmarks/bench_opencv.py --model M.tflite --task hands --data ROOT --truth ref.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from hagrid_edge.agreement import as_samples, detection_agreement
from hagrid_edge.data.annotations import load_split
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.evaluate import EVAL_SCORE_THRESHOLD, run_detector, score_detections
from hagrid_edge.images import read_rgb
from hagrid_edge.paths import read_json, write_text_atomic
from hagrid_edge.pipeline import load_pipeline
from hagrid_edge.processing import preprocess


def input_digest(samples: list, spec) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(preprocess(read_rgb(s.image_path), spec)[0].tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--classifier")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--task", choices=("gestures", "hands"), default="gestures")
    p.add_argument("--limit", type=int)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--save-truth", metavar="JSON", help="write this run's operating-threshold detections")
    group.add_argument("--truth", metavar="JSON", help="score agreement with a --save-truth run's detections")
    args = p.parse_args(argv)
    try:
        samples = load_split(args.data, args.split)[: args.limit or None]
        pipe = load_pipeline(args.model, args.classifier, threads=1, score_threshold=EVAL_SCORE_THRESHOLD)
        detector = getattr(pipe, "detector", pipe)
        dets, sizes = run_detector(pipe, samples, progress=False)
        result = {"opencv": cv2.__version__, "numpy": np.__version__, "images": len(samples),
                  "input_digest": input_digest(samples, detector.spec),
                  **{k: score_detections(samples, sizes, dets, args.task)[k] for k in ("mAP50_95", "mAP50")}}
        detector.score_threshold = None  # the spec's operating threshold, what `run` shows
        operating, _ = run_detector(pipe, samples, progress=False)
        if args.save_truth:
            truth = {s.image_id: {"boxes": s.boxes.tolist(), "labels": s.labels}
                     for s in as_samples(samples, operating, sizes, 0.0)}
            write_text_atomic(args.save_truth, json.dumps({"opencv": cv2.__version__, "detections": truth}))
        else:
            saved = read_json(Path(args.truth), f"--truth {args.truth}")
            reference = [s.__class__(s.image_id, s.gesture, s.image_path,
                                     np.asarray(saved["detections"][s.image_id]["boxes"], np.float32).reshape(-1, 4),
                                     saved["detections"][s.image_id]["labels"]) for s in samples]
            agreement = detection_agreement(reference, dets, sizes, args.task)
            result["agreement_with"] = saved["opencv"]
            result["agreement"] = {k: agreement[k] for k in ("mAP50_95", "mAP50")}
    except (HagridEdgeError, KeyError) as e:
        print(f"bench_opencv: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
