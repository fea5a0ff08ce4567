"""Calibration speed: 360 HaGRID subsample images -> activation ranges -> QDQ model; target < 120 s on 2 cores.

Times the steps of ``calibrate`` that scale with the calibration set: reading + preprocessing the
images (the spec's own preprocessing), the one pass that collects activation ranges, and writing the
QDQ graph from them. The accuracy guard is not included (it scores val images, not calibration ones).

Usage: python benchmarks/bench_calibration.py [--model X.onnx] [--data ROOT] [--method M ...] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hagrid_edge.commands.calibrate import default_data, default_model
from hagrid_edge.quantize.calib_data import calibration_batches
from hagrid_edge.quantize.choices import METHODS
from hagrid_edge.quantize.onnx_int8 import collect_ranges, quantize_qdq
from hagrid_edge.quantize.orchestrator import prepare_fp32

TARGET_S = 120.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--method", nargs="+", choices=METHODS, default=["percentile"])
    p.add_argument("--limit", type=int, default=None, help="calibration images (default: the whole subsample)")
    args = p.parse_args(argv)
    model, data = args.model or default_model(), args.data or default_data()

    fp32, spec, _ = prepare_fp32(model, None)
    t0 = time.perf_counter()
    inputs, stats = calibration_batches(data, spec, args.limit)
    read_s = time.perf_counter() - t0
    print(f"model {model.name}, {stats.used} images ({stats.skipped} skipped), {len(inputs)} inputs")
    print(f"read + preprocess      {read_s:6.1f} s")
    worst = 0.0
    for method in args.method:
        t0 = time.perf_counter()
        ranges = collect_ranges(fp32, spec.input_name, inputs, method)
        collect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        quantize_qdq(fp32, ranges, method)
        qdq_s = time.perf_counter() - t0
        total = read_s + collect_s + qdq_s
        worst = max(worst, total)
        print(f"{method:10s} ranges {collect_s:6.1f} s, QDQ {qdq_s:5.1f} s, total {total:6.1f} s "
              f"(target < {TARGET_S:.0f} s): {'OK' if total < TARGET_S else 'SLOW'}")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
