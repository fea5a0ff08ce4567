"""INT8 artifacts against their FP32 model on calibrate's photo sets, on every task the labels allow.

``calibrate``'s report scores a detector on its guard's task only (gestures for a gesture detector);
this scores each artifact on gestures and hands, on the tune photos (where the guard chose), the
report photos (where nothing was chosen) and all of val: mAP against the annotations, the drop
against the FP32 model, and agreement with the FP32 model's own detections. The photo sets are
``calibrate``'s, with the same rule for a model trained on this data's train split (both halves from
val, cut by user).

Usage: python benchmarks/bench_calibration_photos.py --fp32 assets/models/gesture_detector.onnx
           --model A.tflite [B.tflite ...] [--data ROOT] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hagrid_edge.commands.calibrate import default_data
from hagrid_edge.data.annotations import load_split
from hagrid_edge.quantize.accuracy import Scorer, detector_pipeline, fp32_truth
from hagrid_edge.quantize.photo_sets import PhotoSet, photo_sets, trained_on
from hagrid_edge.spec import resolve_spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", type=Path, required=True, help="the FP32 model the artifacts were made from")
    p.add_argument("--model", type=Path, nargs="+", required=True)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    data = args.data or default_data()
    fp32_spec = resolve_spec(args.fp32)
    trained = trained_on(fp32_spec.provenance, data) == "train"
    tune, report = photo_sets(data, trained=trained)
    val = PhotoSet("val", load_split(data, "val"), f"every val photo of {data.name}")
    make = detector_pipeline(1)
    tasks = ("gestures", "hands") if len(fp32_spec.classes) > 1 else ("hands",)
    rows = []
    print("| artifact | photos | task | mAP50-95 (drop) | mAP50 (drop) | agreement mAP50-95 / mAP50 |\n"
          "|---|---|---|---|---|---|")
    for photos in (tune, report, val):
        truth = fp32_truth(photos, make, args.fp32, fp32_spec)
        for task in tasks:
            scorer = Scorer(photos, task, make, truth)
            ref = scorer.score(args.fp32, fp32_spec)
            for model in [args.fp32, *args.model]:
                got = ref if model == args.fp32 else scorer.score(model, resolve_spec(model))
                row = {"artifact": str(model), "photos": photos.name, "images": got.images, "task": task,
                       "mAP50_95": got.value, "mAP50": got.secondary["mAP50"],
                       "drop": [round(ref.value - got.value, 2), round(ref.secondary["mAP50"] - got.secondary["mAP50"], 2)],
                       "agreement": got.agreement.get("mAP50_95"), "agreement_mAP50": got.agreement.get("mAP50")}
                rows.append(row)
                print(f"| {model.name} | {photos.name} ({got.images}) | {task} | {got.value:.2f} ({-row['drop'][0]:+.2f}) | "
                      f"{got.secondary['mAP50']:.2f} ({-row['drop'][1]:+.2f}) | {row['agreement']:.2f} / "
                      f"{row['agreement_mAP50']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"sets": {s.name: s.describe() for s in (tune, report, val)}, "rows": rows},
                                        indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
