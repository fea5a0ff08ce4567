"""``hagrid-edge eval``: accuracy of an artifact (or a detector + classifier pair) on a HaGRID split."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from hagrid_edge.flags import positive_int
from hagrid_edge.paths import resolve_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO mAP / F1 of a model on a HaGRID split",
                       description="Score a detector (COCO mAP50-95, mAP50, per-class AP), a two-stage "
                                   "detector + crop classifier, a classifier (F1) or a hand landmark model "
                                   "(mean point error where the annotations have landmarks, agreement with "
                                   "--reference) on real HaGRID images.")
    p.add_argument("--model", required=True, type=resolve_model,
                   help="artifact: .onnx (and other formats as installed); a path, or a shipped model's name")
    p.add_argument("--classifier", type=resolve_model,
                   help="hand-crop classifier run on every detected hand (two-stage)")
    p.add_argument("--data", required=True, help="HaGRID data root")
    p.add_argument("--split", default="val", help="annotation split (default: val)")
    p.add_argument("--task", choices=("gestures", "hands"), default="gestures",
                   help="gestures: one class per gesture; hands: every box is 'hand'")
    p.add_argument("--targets", nargs="+", metavar="GESTURE", help="only these gesture files")
    p.add_argument("--limit", type=positive_int, help="score only the first N images, N >= 1")
    p.add_argument("--spec", help="spec file for a model with none embedded or beside it")
    p.add_argument("--classifier-spec", help="spec file for the classifier")
    p.add_argument("--reference", metavar="FILE", type=resolve_model,
                   help="hand landmark models: a second landmark model (e.g. hand_landmark_full.tflite) to "
                        "measure agreement with, in pixels, on the same hand crops")
    p.add_argument("--compare", metavar="MODEL", type=resolve_model,
                   help="a second detector scored on the same photos (its difference is paired)")
    p.add_argument("--compare-classifier", metavar="FILE", type=resolve_model, help="crop classifier behind --compare")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="95%% intervals from N resamples of the split's users (images where it has no "
                        "user ids); with --compare, the interval of the difference on the same draws")
    p.add_argument("--threads", type=positive_int, help="runtime threads, >= 1")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hagrid_edge.data.annotations import load_split
    from hagrid_edge.deploy.common.backend import open_backend
    from hagrid_edge.errors import HagridEdgeError
    from hagrid_edge.evaluate import evaluate_classifier, evaluate_landmarks
    from hagrid_edge.landmarks import Landmarker, find_landmark_spec, open_landmarker
    from hagrid_edge.pipeline import CropClassifier, FrameClassifier

    if args.bootstrap < 0:
        raise HagridEdgeError(f"--bootstrap {args.bootstrap}: a number of resamples, 0 or more")
    if args.compare_classifier and not args.compare:
        raise HagridEdgeError("--compare-classifier needs --compare (the detector it runs behind)")
    samples = load_split(args.data, args.split, args.targets)
    if args.limit:
        samples = samples[: args.limit]
    landmarks = find_landmark_spec(args.model, args.spec)
    if args.reference and landmarks is None:
        raise HagridEdgeError(f"--reference {args.reference}: only for hand landmark models, {args.model} is not one")
    backend = open_backend(args.model, spec=landmarks, spec_file=args.spec, threads=args.threads)
    if (args.compare or args.bootstrap) and (landmarks is not None or backend.spec.task == "classifier"):
        raise HagridEdgeError(f"--compare / --bootstrap: only for detectors, {args.model} is not one")
    if landmarks is not None:
        reference = open_landmarker(args.reference, threads=args.threads) if args.reference else None
        result = evaluate_landmarks(Landmarker(backend), samples, reference, progress=not args.json)
        result["reference"] = args.reference
    elif backend.spec.task == "classifier":
        clf = CropClassifier(backend) if backend.spec.crop else FrameClassifier(backend)
        result = evaluate_classifier(clf, samples, progress=not args.json)
    else:
        result = _score_detectors(args, samples)
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
    elif "f1" in result:
        print(f"{args.model} on {args.data} [{args.split}, classifier]: f1 {result['f1']:.1f}, "
              f"accuracy {result['accuracy']:.1f} over {result['images']} images")
        _print_per_class(result)
    else:
        _print_detectors(args, result)
    return 0


def _score_detectors(args: argparse.Namespace, samples: Sequence) -> dict:
    """The model's mAP and, with --compare, the second pipeline's on the same photos; --bootstrap
    adds intervals (and the paired interval of their difference)."""
    from hagrid_edge.bootstrap import bootstrap_map
    from hagrid_edge.evaluate import EVAL_SCORE_THRESHOLD, detect_and_score
    from hagrid_edge.pipeline import load_pipeline

    pipelines = [(args.model, args.classifier, args.spec, args.classifier_spec)]
    if args.compare:
        pipelines.append((args.compare, args.compare_classifier, None, None))
    rows, runs, sizes = [], [], []
    for model, classifier, spec, classifier_spec in pipelines:
        pipe = load_pipeline(model, classifier, spec, classifier_spec, args.threads,
                             score_threshold=EVAL_SCORE_THRESHOLD)
        _check_task(args.task, model, classifier, pipe)
        row, dets, sizes = detect_and_score(pipe, samples, args.task, progress=not args.json)
        rows.append(row)
        runs.append(dets)
    result = rows[0]
    if args.compare:
        result["compare"] = {"model": str(args.compare), "classifier": args.compare_classifier, **rows[1]}
    if args.bootstrap:
        result["bootstrap"] = bootstrap_map(samples, sizes, runs, args.task, args.bootstrap)
    return result


def _check_task(task: str, model: str, classifier: str | None, pipe: object) -> None:
    """--task gestures needs a pipeline that names gestures: a hands-only detector would score 0."""
    from hagrid_edge.errors import HagridEdgeError
    from hagrid_edge.labels import GESTURES
    from hagrid_edge.pipeline import TwoStage

    labels = pipe.classifier.spec.labels if isinstance(pipe, TwoStage) else pipe.spec.labels  # type: ignore[attr-defined]
    if task == "gestures" and not set(labels) & set(GESTURES):
        raise HagridEdgeError(f"--task gestures: {classifier or model} names no gesture (its classes: "
                              f"{', '.join(labels[:4])}); score hands with --task hands, or add a --classifier")


def _print_per_class(result: dict) -> None:
    for name, value in result["per_class"].items():
        print(f"  {name:18s} {value:6.1f}")


def _print_detectors(args: argparse.Namespace, result: dict) -> None:
    boot = result.get("bootstrap")
    rows = [(args.model, args.classifier, result)]
    if "compare" in result:
        rows.append((args.compare, args.compare_classifier, result["compare"]))
    for k, (model, classifier, row) in enumerate(rows):
        name = f"{model} + {classifier}" if classifier else str(model)
        print(f"{name} on {args.data} [{args.split}, {row['task']}]: mAP50_95 {row['mAP50_95']:.1f}, "
              f"mAP50 {row['mAP50']:.1f} over {row['images']} images")
        if boot:
            ci = boot["intervals"][k]
            print(f"  {boot['confidence']:.0%} interval over {boot['resamples']} resamples of {boot['groups']} "
                  f"{boot['unit']}s: " + ", ".join(f"{m} [{ci[m][0]:.1f}, {ci[m][1]:.1f}]" for m in ci))
        if len(rows) == 1:
            _print_per_class(row)
    if boot and "difference" in boot:
        diff, ahead = boot["difference"], boot["first_better_share"]
        print("difference (model - compare), paired on the same draws: " + ", ".join(
            f"{m} {result[m] - result['compare'][m]:+.1f} [{diff[m][0]:+.1f}, {diff[m][1]:+.1f}], "
            f"model ahead in {ahead[m]:.0%} of draws" for m in diff))
