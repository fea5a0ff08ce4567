"""``hagrid-edge export``: a training checkpoint -> FP32 ONNX with its spec (embedded and sidecar), or
an ONNX detector with decode + NMS inside (the HaGRID authors' form) -> its graph cut to the raw heads."""

from __future__ import annotations

import argparse
from pathlib import Path

from hagrid_edge.flags import ranged


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to FP32 ONNX (raw head outputs + spec)",
                       description="Export a hagrid-edge checkpoint to ONNX (raw head outputs; decoding and "
                                   "NMS stay in the shared host post-processing), simplify it with onnxsim, "
                                   "embed the spec and write it beside as <out>.json, then compare ONNX "
                                   "Runtime with PyTorch on real images.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="hagrid-edge checkpoint (.pt)")
    source.add_argument("--cut", metavar="ONNX",
                        help="an ONNX detector with decode + NMS in its graph (e.g. the HaGRID authors' hand "
                             "detector): write the graph cut to its raw heads, priors and thresholds read from "
                             "the graph into the spec (what calibrate does first), checked against the original")
    p.add_argument("--spec", help="with --cut: spec file for a model with none embedded or beside it")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=ranged(int, 13), default=17,
                   help="ONNX opset, >= 13 (per-channel INT8 QDQ needs 13; default 17)")
    p.add_argument("--data", help="HaGRID root whose images check the export (default: the shipped sample)")
    p.add_argument("--split", default="val", help="split of --data used for the check")
    p.add_argument("--check-images", type=ranged(int, 1, 10000), default=8,
                   help="real images the export is checked on, in [1, 10000] (default 8)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.set_defaults(func=run)


def check_out(args: argparse.Namespace) -> None:
    """The model written (and its spec beside it) must not be one of the inputs: it would replace the
    original model, and the check would compare the result with itself."""
    from hagrid_edge.paths import check_output_path, refuse_same_file
    from hagrid_edge.spec import sidecar_path

    inputs = [("--cut", args.cut), ("--checkpoint", args.checkpoint), ("--spec", args.spec)]
    if args.cut:
        inputs.append(("--cut's spec", sidecar_path(args.cut)))
    if args.checkpoint:
        inputs.append(("--checkpoint's spec", sidecar_path(args.checkpoint)))
    refuse_same_file("--out", args.out, inputs)
    refuse_same_file("--out's spec", sidecar_path(args.out), inputs)
    check_output_path("--out", args.out)


def run(args: argparse.Namespace) -> int:
    check_out(args)
    if args.cut:
        return _cut(args)
    from hagrid_edge.export import export_onnx

    report = export_onnx(args.checkpoint, args.out, opset=args.opset, data=args.data, split=args.split,
                         check_images=args.check_images, simplify=not args.no_simplify)
    print(f"wrote {report['onnx']} ({report['size_mb']:.2f} MB) and {report['sidecar']}")
    for name, diff in report["max_abs_diff"].items():
        print(f"  ONNX Runtime vs PyTorch on {report['images']} real images: {name} max abs diff {diff:.3g}")
    return 0


def _cut(args: argparse.Namespace) -> int:
    import numpy as np

    from hagrid_edge.deploy.common.backend import open_backend
    from hagrid_edge.errors import HagridEdgeError
    from hagrid_edge.images import split_frames
    from hagrid_edge.paths import DEFAULT_DATA
    from hagrid_edge.pipeline import Detector
    from hagrid_edge.quantize.onnx_files import save_onnx_with_spec
    from hagrid_edge.quantize.orchestrator import prepare_fp32

    model, spec, info = prepare_fp32(Path(args.cut), Path(args.spec) if args.spec else None, "--cut")
    if not info["graph_cut"]:
        raise HagridEdgeError(f"--cut {args.cut}: its outputs are already raw heads ({spec.outputs}), nothing to cut")
    out = save_onnx_with_spec(model, spec, args.out)
    # The cut graph + host decode/NMS must give the original graph's detections at its own threshold.
    original = Detector(open_backend(args.cut, spec_file=args.spec))
    cut = Detector(open_backend(out))
    frames = split_frames(args.data or DEFAULT_DATA, args.split, args.check_images)
    worst, boxes = 0.0, 0
    for frame in frames:
        a, b = original(frame), cut(frame)
        if len(a) != len(b):
            raise HagridEdgeError(f"{out}: the cut graph finds {len(b)} hands where {args.cut} finds {len(a)}")
        if len(a):
            worst = max(worst, float(np.abs(np.asarray(a.boxes) - np.asarray(b.boxes)).max()))
        boxes += len(a)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, outputs {spec.outputs}, {len(spec.priors)} priors) "
          f"and its spec beside it; decode and NMS now run in hagrid-edge's post-processing")
    print(f"  against {args.cut} on {len(frames)} real images: the same {boxes} detections, "
          f"box max abs diff {worst:.3g} px")
    return 0
