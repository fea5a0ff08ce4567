"""``hagrid-edge calibrate`` (also ``python quantize/calibrate.py``): INT8 / FP16 artifacts from one calibration pass."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hagrid_edge.quantize.choices import (
    DEFAULT_MAX_DROP,
    DEFAULT_MAX_DROP50,
    DEFAULT_METHOD,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_TRT_VERSION,
    DETECTOR_GUARDS,
    METHODS,
    TARGETS,
)
from hagrid_edge.quantize.landmark_choices import DEFAULT_MAX_POINT_ERROR, DEFAULT_MAX_PRESENCE_DIFF


def default_model() -> Path:
    """The README's default model: the shipped hand detector, else the shared one."""
    from hagrid_edge.paths import DEFAULT_MODELS, shared_root

    shipped = DEFAULT_MODELS / "hand_detector.onnx"
    return shipped if shipped.is_file() else shared_root() / "models" / "hagrid-hand-detector" / "hand_detector.onnx"


def default_data() -> Path:
    from hagrid_edge.paths import shared_root

    return shared_root() / "data" / "hagrid512-mini"


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown target(s) {unknown or [text]} (choose from {', '.join(TARGETS)})")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subset", action="store_true",
                   help="calibrate on the HaGRID subsample of --data (the only calibration source; kept for "
                        "the documented command line)")
    p.add_argument("--model", type=Path,
                   help="FP32 ONNX or training checkpoint (default: assets/models/hand_detector.onnx), or a hand landmark "
                        ".tflite (e.g. assets/models/hand_landmark_lite.tflite: its INT8 TFLite, guarded in pixels)")
    p.add_argument("--spec", type=Path, help="spec file for a model with none embedded or beside it")
    p.add_argument("--classifier", type=Path,
                   help="FP32 ONNX hand-crop classifier run behind --model: both are calibrated and the two-stage "
                        "pipeline is guarded and reported")
    p.add_argument("--classifier-spec", type=Path, help="spec file for --classifier")
    p.add_argument("--detector-guard", choices=DETECTOR_GUARDS, default=DETECTOR_GUARDS[0],
                   help="with --classifier, what the detector's float layers are chosen on: 'pair' (default), the "
                        "pair's gestures with the FP32 classifier behind it (holds the pair, keeps more in float), or "
                        "'hands', the detector on its own (more of it in int8; the pair is still reported)")
    p.add_argument("--data", type=Path, help="HaGRID data root with a subsample (default: shared hagrid512-mini)")
    p.add_argument("--targets", type=_targets, default=TARGETS, metavar="T[,T...]",
                   help=f"any of {', '.join(TARGETS)} (default: all)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"activation range method (default: {DEFAULT_METHOD})")
    p.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                   help="largest accepted drop vs FP32 on the tune photos against their annotations, in mAP50-95 "
                        f"(F1 for a classifier on its own) points (default {DEFAULT_MAX_DROP})")
    p.add_argument("--max-drop50", type=float, default=DEFAULT_MAX_DROP50,
                   help="detectors and pairs: also the largest accepted drop in mAP50 points on the tune photos "
                        f"(default {DEFAULT_MAX_DROP50})")
    p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help="smallest accepted agreement with the FP32 model on the tune photos: mAP50-95 of the INT8 "
                        f"detections against FP32's own (default {DEFAULT_MIN_AGREEMENT})")
    p.add_argument("--max-board-ratio", type=float, default=None, metavar="R",
                   help="TFLite INT8: at most R times its FP32 form's instructions per frame on a Pi 5 "
                        "(modelled, quantize/board_cost.py); default: no cost limit")
    p.add_argument("--max-point-error", type=float, default=None, metavar="PCT",
                   help="hand landmark models: largest accepted mean INT8-vs-FP32 point distance on the tune photos, "
                        f"in %% of the hand box's long side (default {DEFAULT_MAX_POINT_ERROR})")
    p.add_argument("--max-presence-diff", type=float, default=None, metavar="P",
                   help="hand landmark models: largest accepted mean presence-score difference "
                        f"(default {DEFAULT_MAX_PRESENCE_DIFF})")
    p.add_argument("--limit", type=int, help="use only the first N subsample images")
    p.add_argument("--eval-limit", type=int, help="use at most N tune and N report photos in the guard")
    p.add_argument("--no-guard", action="store_true", help="skip the accuracy guard and mixed precision")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version in the cache header (default {DEFAULT_TRT_VERSION})")
    p.add_argument("--threads", type=int, help="runtime threads for the accuracy guard")
    p.add_argument("--out", type=Path, required=True, help="output folder")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="INT8 QDQ ONNX, TensorRT cache, TFLite INT8/FP16 from the HaGRID subsample",
                       description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hagrid_edge.errors import HagridEdgeError
    from hagrid_edge.quantize.orchestrator import Options, calibrate

    if args.limit is not None and args.limit <= 0:
        raise HagridEdgeError(f"--limit must be positive, got {args.limit}")
    if args.max_drop < 0:
        raise HagridEdgeError(f"--max-drop must be >= 0, got {args.max_drop}")
    if args.max_drop50 < 0:
        raise HagridEdgeError(f"--max-drop50 must be >= 0, got {args.max_drop50}")
    if not 0 <= args.min_agreement <= 100:
        raise HagridEdgeError(f"--min-agreement must be within 0..100, got {args.min_agreement}")
    if args.eval_limit is not None and args.eval_limit <= 0:
        raise HagridEdgeError(f"--eval-limit must be positive, got {args.eval_limit}")
    if args.max_board_ratio is not None and args.max_board_ratio <= 0:
        raise HagridEdgeError(f"--max-board-ratio must be positive, got {args.max_board_ratio}")
    model = args.model or default_model()
    if model.suffix.lower() == ".tflite":
        return _landmarks(args, model)
    if args.max_point_error is not None or args.max_presence_diff is not None:
        raise HagridEdgeError("--max-point-error / --max-presence-diff: only for a hand landmark .tflite --model")
    opts = Options(model=model, data=args.data or default_data(), out=args.out,
                   targets=args.targets, method=args.method, max_drop=args.max_drop, max_drop50=args.max_drop50,
                   min_agreement=args.min_agreement, limit=args.limit, spec_file=args.spec,
                   classifier=args.classifier, classifier_spec=args.classifier_spec, trt_version=args.trt_version,
                   eval_limit=args.eval_limit, threads=args.threads, guard=not args.no_guard,
                   detector_guard=args.detector_guard, max_board_ratio=args.max_board_ratio)
    report = calibrate(opts)
    print(report.markdown(), end="")
    failed = [t.target for t in report.targets if t.error] + [p.target for p in report.pairs if p.error]
    if failed:
        return 2
    return _over_limits([t for t in report.targets if t.within is False])


def _over_limits(targets: list) -> int:
    """3 (one line naming them) when the guard could not hold some artifact to its limits, else 0."""
    if not targets:
        return 0
    names = ", ".join(f"{t.target} ({t.path.name})" for t in targets)
    print(f"calibrate: no candidate held the limits on the tune photos for {names}; written under that name "
          "with the report", file=sys.stderr)
    return 3


def _landmarks(args: argparse.Namespace, model: Path) -> int:
    """A TFLite --model: a hand landmark model, quantized TFLite -> TFLite (quantize/landmarks_int8.py)."""
    from hagrid_edge.errors import HagridEdgeError
    from hagrid_edge.quantize.landmarks_int8 import LandmarkOptions, calibrate_landmarks

    if args.classifier is not None:
        raise HagridEdgeError(f"--classifier {args.classifier}: a hand landmark model runs on its own here")
    max_error = DEFAULT_MAX_POINT_ERROR if args.max_point_error is None else args.max_point_error
    max_presence = DEFAULT_MAX_PRESENCE_DIFF if args.max_presence_diff is None else args.max_presence_diff
    if max_error < 0 or not 0 <= max_presence <= 1:
        raise HagridEdgeError(f"--max-point-error must be >= 0 and --max-presence-diff within 0..1, got {max_error} "
                              f"and {max_presence}")
    report = calibrate_landmarks(LandmarkOptions(
        model=model, data=args.data or default_data(), out=args.out, targets=args.targets, method=args.method,
        max_point_error=max_error, max_presence_diff=max_presence, limit=args.limit, spec_file=args.spec,
        eval_limit=args.eval_limit, threads=args.threads, guard=not args.no_guard))
    print(report.markdown(), end="")
    if any(t.error for t in report.targets):
        return 2
    return _over_limits([t for t in report.targets if t.within is False])


def main(argv: list[str] | None = None) -> int:
    """``python quantize/calibrate.py ...``: the same parser and errors as ``hagrid-edge calibrate``."""
    from hagrid_edge.cli import main as cli_main

    return cli_main(["calibrate", *(sys.argv[1:] if argv is None else argv)])
