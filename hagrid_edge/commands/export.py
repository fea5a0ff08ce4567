"""``hagrid-edge export``: a training checkpoint -> FP32 ONNX with its spec (embedded and sidecar)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to FP32 ONNX (raw head outputs + spec)",
                       description="Export a hagrid-edge checkpoint to ONNX (raw head outputs; decoding and "
                                   "NMS stay in the shared host post-processing), simplify it with onnxsim, "
                                   "embed the spec and write it beside as <out>.json, then compare ONNX "
                                   "Runtime with PyTorch on real images.")
    p.add_argument("--checkpoint", required=True, help="hagrid-edge checkpoint (.pt)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13 for per-channel INT8 QDQ)")
    p.add_argument("--data", help="HaGRID root whose images check the export (default: the shipped sample)")
    p.add_argument("--split", default="val", help="split of --data used for the check")
    p.add_argument("--check-images", type=int, default=8, help="images compared ONNX Runtime vs PyTorch")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hagrid_edge.export import export_onnx

    report = export_onnx(args.checkpoint, args.out, opset=args.opset, data=args.data, split=args.split,
                         check_images=args.check_images, simplify=not args.no_simplify)
    print(f"wrote {report['onnx']} ({report['size_mb']:.2f} MB) and {report['sidecar']}")
    for name, diff in report["max_abs_diff"].items():
        print(f"  ONNX Runtime vs PyTorch on {report['images']} real images: {name} max abs diff {diff:.3g}")
    return 0
