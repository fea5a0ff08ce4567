"""``hagrid-edge eval``: accuracy of an artifact (or a detector + classifier pair) on a HaGRID split."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO mAP / F1 of a model on a HaGRID split",
                       description="Score a detector (COCO mAP50-95, mAP50, per-class AP), a two-stage "
                                   "detector + crop classifier, a classifier (F1) or a hand landmark model "
                                   "(mean point error where the annotations have landmarks, agreement with "
                                   "--reference) on real HaGRID images.")
    p.add_argument("--model", required=True, help="artifact: .onnx (and other formats as installed)")
    p.add_argument("--classifier", help="hand-crop classifier run on every detected hand (two-stage)")
    p.add_argument("--data", required=True, help="HaGRID data root")
    p.add_argument("--split", default="val", help="annotation split (default: val)")
    p.add_argument("--task", choices=("gestures", "hands"), default="gestures",
                   help="gestures: one class per gesture; hands: every box is 'hand'")
    p.add_argument("--targets", nargs="+", metavar="GESTURE", help="only these gesture files")
    p.add_argument("--limit", type=int, help="score only the first N images")
    p.add_argument("--spec", help="spec file for a model with none embedded or beside it")
    p.add_argument("--classifier-spec", help="spec file for the classifier")
    p.add_argument("--reference", metavar="FILE",
                   help="hand landmark models: a second landmark model (e.g. hand_landmark_full.tflite) to "
                        "measure agreement with, in pixels, on the same hand crops")
    p.add_argument("--threads", type=int, help="runtime threads")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hagrid_edge.data.annotations import load_split
    from hagrid_edge.deploy.common.backend import open_backend
    from hagrid_edge.errors import HagridEdgeError
    from hagrid_edge.evaluate import (
        EVAL_SCORE_THRESHOLD,
        evaluate_classifier,
        evaluate_detector,
        evaluate_landmarks,
    )
    from hagrid_edge.landmarks import Landmarker, find_landmark_spec, open_landmarker
    from hagrid_edge.pipeline import CropClassifier, FrameClassifier, load_pipeline

    samples = load_split(args.data, args.split, args.targets)
    if args.limit:
        samples = samples[: args.limit]
    landmarks = find_landmark_spec(args.model, args.spec)
    if args.reference and landmarks is None:
        raise HagridEdgeError(f"--reference {args.reference}: only for hand landmark models, {args.model} is not one")
    backend = open_backend(args.model, spec=landmarks, spec_file=args.spec, threads=args.threads)
    if landmarks is not None:
        reference = open_landmarker(args.reference, threads=args.threads) if args.reference else None
        result = evaluate_landmarks(Landmarker(backend), samples, reference, progress=not args.json)
        result["reference"] = args.reference
    elif backend.spec.task == "classifier":
        clf = CropClassifier(backend) if backend.spec.crop else FrameClassifier(backend)
        result = evaluate_classifier(clf, samples, progress=not args.json)
    else:
        pipe = load_pipeline(args.model, args.classifier, args.spec, args.classifier_spec, args.threads,
                             score_threshold=EVAL_SCORE_THRESHOLD)
        result = evaluate_detector(pipe, samples, args.task, progress=not args.json)
    result = {"model": str(args.model), "classifier": args.classifier, "split": args.split, **result}
    if args.json:
        print(json.dumps(result))
    elif landmarks is not None:
        print(f"{args.model} on {args.data} [{args.split}, landmarks]: {result['hands']} hands in "
              f"{result['images']} images, mean presence {result['presence_mean']}")
        print(f"  point error vs annotations: {result['mean_point_error_px']} px "
              f"({result['mean_point_error_pct_box']} % of the box) over {result['annotated_hands']} annotated hands"
              + ("" if result["annotated_hands"] else " (this split's annotations carry no landmarks)"))
        if args.reference:
            print(f"  agreement with {args.reference}: {result['agreement_px']} px "
                  f"({result['agreement_pct_box']} % of the box)")
    else:
        metric = ("f1", "accuracy") if "f1" in result else ("mAP50_95", "mAP50")
        print(f"{args.model} on {args.data} [{args.split}, {result['task']}]: "
              + ", ".join(f"{m} {result[m]:.1f}" for m in metric) + f" over {result['images']} images")
        for name, ap in result["per_class"].items():
            print(f"  {name:18s} {ap:6.1f}")
    return 0
