"""INT8 accuracy against the number of calibration photos: what the smallest safe calibration set is.

For each size N the activation ranges come from the first N subsample photos (spread over the
gestures, as ``calibrate --limit N`` takes them); the layers kept in float are the ones ``calibrate``
chose (read from its report, so only the calibration set changes between rows) and every artifact
is scored on the report photos, which no choice was made on: hands mAP against the annotations of
their val part and agreement with the FP32 model on all of them.

Usage: python benchmarks/bench_calibration_size.py --report OUT/calibration_report.json
           [--data ROOT] [--sizes 25 50 100 360] [--targets onnx-int8 tflite-int8] [--eval-limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hagrid_edge.commands.calibrate import default_data
from hagrid_edge.quantize.accuracy import Scorer, detector_pipeline, fp32_truth, guard_task
from hagrid_edge.quantize.calib_data import calibration_batches
from hagrid_edge.quantize.candidates import OnnxCandidates
from hagrid_edge.quantize.onnx_int8 import collect_ranges
from hagrid_edge.quantize.orchestrator import prepare_fp32
from hagrid_edge.quantize.photo_sets import photo_sets
from hagrid_edge.spec import resolve_spec

SIZES = (25, 50, 100, 360)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", type=Path, required=True, help="calibration_report.json of a calibrate run")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--targets", nargs="+", choices=("onnx-int8", "tflite-int8"), default=["onnx-int8", "tflite-int8"])
    p.add_argument("--eval-limit", type=int, default=None, help="report photos to score (default: all)")
    args = p.parse_args(argv)
    report = json.loads(args.report.read_text())
    stage = report["stages"][0]
    data = args.data or default_data()
    fp32, spec, _ = prepare_fp32(Path(stage["source"]), None)
    fp32_path = Path(stage["fp32"]["path"])
    chosen = {t["target"]: t.get("float_layers", []) for t in stage["targets"]}
    _, held = photo_sets(data, args.eval_limit)
    make = detector_pipeline(1)
    scorer = Scorer(held, guard_task(spec), make, fp32_truth(held, make, fp32_path, resolve_spec(fp32_path)))
    ref = scorer.score(fp32_path, spec)
    print(f"{Path(stage['source']).name}: report photos {len(held.samples)} ({len(held.labelled_samples())} "
          f"labelled); FP32 {ref.metric} {ref.value:.2f}, mAP50 {ref.secondary['mAP50']:.2f}")
    print("| target | calibration photos | float layers | mAP50-95 (drop) | mAP50 (drop) | agreement |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="hagrid-calib-size.") as tmp:
        work = Path(tmp)
        inputs, _ = calibration_batches(data, spec, max(args.sizes))
        conv = None
        if "tflite-int8" in args.targets:
            from hagrid_edge.quantize.onnx_files import fix_batch, save_onnx_with_spec
            from hagrid_edge.quantize.tflite_export import TFLiteConversion

            src = save_onnx_with_spec(fix_batch(fp32, 1), spec, work / "b1.onnx")
            conv = TFLiteConversion(src, spec, inputs, work, work / "convert.log")
        for n in args.sizes:
            for target in args.targets:
                if target == "onnx-int8":
                    ranges = collect_ranges(fp32, spec.input_name, inputs[:n], report["method"])
                    cands = OnnxCandidates(fp32, spec, ranges, report["method"], work)
                else:
                    cands = conv.int8_candidates(inputs[:n])
                floats = [u for u in chosen.get(target, []) if u in cands.units]
                cand = cands.build(floats)
                s = scorer.score(cand.path, cand.spec)
                print(f"| {target} | {n} | {len(floats)} | {s.value:.2f} ({s.value - ref.value:+.2f}) | "
                      f"{s.secondary['mAP50']:.2f} ({s.secondary['mAP50'] - ref.secondary['mAP50']:+.2f}) | "
                      f"{s.agreement.get('mAP50_95', float('nan')):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
