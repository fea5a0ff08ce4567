"""The guard's Pi cost model against the emulated Pi: counted infer instructions vs ``quantize.board_cost``.

Makes INT8 TFLite candidates of one FP32 ONNX model with random sets of units kept in float (plus the
all-int8 and all-float forms, and any TFLite files given), counts each one's infer instructions per
frame under qemu with the Pi's CPU pinned (``bench --emulate``'s counter: median over ``--frames`` val
frames after one warm-up frame), and prints the model's prediction beside each count. ``--fit`` fits
the coefficients on the even-numbered candidates, checks them on the odd-numbered ones and the given
files, and prints them for ``COEFFICIENTS`` in ``quantize/board_cost.py``. ``--refit`` fits them on
the counts of earlier runs (their ``--json`` and ``--keep``), several models together, and checks each
row with the coefficients fitted on all the others (leave one out).

Usage: python benchmarks/bench_calibration_cost.py --model assets/models/gesture_detector.onnx
           [--candidates 24] [--cpus pi5,pi4] [--frames 2] [--fit] [--extra A.tflite ...] [--json OUT]
           [--keep DIR]
       python benchmarks/bench_calibration_cost.py --refit RUN1.json RUN2.json ...
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from hagrid_edge.benchmarks.emulate import count_on
from hagrid_edge.benchmarks.suite import SuiteConfig, Target
from hagrid_edge.commands.calibrate import default_data
from hagrid_edge.deploy.rpi.emulate import parse_cpus
from hagrid_edge.quantize import board_cost, calib_data
from hagrid_edge.quantize.onnx_files import fix_batch, save_onnx_with_spec
from hagrid_edge.quantize.orchestrator import prepare_fp32
from hagrid_edge.quantize.tflite_export import TFLiteConversion
from hagrid_edge.spec import save_sidecar


def candidates(model: Path, data: Path, count: int, seed: int, work: Path) -> list[tuple[str, Path]]:
    """(name, path): all-float, all-int8, then ``count`` candidates with random unit sets in float."""
    fp32, spec, _ = prepare_fp32(model, None)
    inputs, _ = calib_data.calibration_batches(data, spec, None)
    src = save_onnx_with_spec(fix_batch(fp32, 1), spec, work / f"{model.stem}_b1.onnx")
    conv = TFLiteConversion(src, spec, inputs, work, work / "convert.log")
    cands = conv.int8_candidates()
    out = []
    for name, made in (("float32", conv.float32), ("fp16-weights", conv.float16)):
        path = work / f"{name}.tflite"
        shutil.copy(made, path)
        out.append((name, path))
    rng = random.Random(seed)
    for k in range(count + 1):
        share = 0.0 if k == 0 else rng.random()
        floats = [u for u in cands.units if rng.random() < share]
        built = cands.build(float_layers=floats)
        path = work / f"candidate_{k}.tflite"
        shutil.copy(built.path, path)
        out.append((f"int8, {len(floats)} of {len(cands.units)} units float", path))
    for _, path in out:  # the counter runs the deployed pipeline, which reads the spec beside the file
        save_sidecar(conv.spec_of(path), path)
    return out


def _line(cpu: str, k: int, what: str, counted: float, predicted: float, name: str) -> float:
    err = (predicted - counted) / counted if counted else float("nan")
    print(f"{cpu} {k:3d} {what} counted {counted / 1e6:8.2f} M  model {predicted / 1e6:8.2f} M  {100 * err:+6.1f} %  "
          f"{name}")
    return abs(err)


EXTREME_WEIGHT = 10.0  # the all-float and all-int8 forms: the report's ratios are to them
EXTREMES = ("float32", "fp16-weights", "int8, 0 of ")


def _weights(names: list[str]) -> list[float]:
    return [EXTREME_WEIGHT if name.startswith(EXTREMES) else 1.0 for name in names]


def refit(runs: list[Path]) -> int:
    """Coefficients from the counts of earlier runs; each row checked with a fit on all the others."""
    rows, counted = [], {}
    for run in runs:
        saved = json.loads(run.read_text(encoding="utf-8"))
        start = len(rows)
        rows += [(r["name"], board_cost.features(Path(r["path"]))) for r in saved["rows"]]
        for cpu, counts in saved["counted"].items():
            counted.setdefault(cpu, [0] * start)
            counted[cpu] += counts
    for cpu, counts in counted.items():
        usable = [k for k, n in enumerate(counts) if n]
        weights = _weights([name for name, _ in rows])
        coef = board_cost.fit([rows[k][1] for k in usable], [counts[k] for k in usable], [weights[k] for k in usable])
        print(f"{cpu}: fitted on {len(usable)} rows: {json.dumps({k: float(f'{v:.4g}') for k, v in coef.items()})}")
        errors = []
        for k in usable:
            others = [j for j in usable if j != k]
            loo = board_cost.fit([rows[j][1] for j in others], [counts[j] for j in others], [weights[j] for j in others])
            pred = sum(loo[x] * rows[k][1][x] for x in board_cost.FEATURES)
            errors.append(_line(cpu, k, "left out", counts[k], pred, rows[k][0]))
        print(f"{cpu}: left-out error: largest {100 * max(errors):.1f} %, "
              f"rms {100 * (sum(e * e for e in errors) / len(errors)) ** 0.5:.1f} %")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="FP32 ONNX model")
    p.add_argument("--refit", type=Path, nargs="+", help="fit on earlier runs' --json files instead of counting")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--candidates", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", default="pi5,pi4")
    p.add_argument("--frames", type=int, default=2, help="counted val frames after one warm-up frame")
    p.add_argument("--extra", type=Path, nargs="*", default=[], help="more TFLite files to count and check")
    p.add_argument("--fit", action="store_true", help="fit the coefficients (even rows) and check them (odd rows)")
    p.add_argument("--json", type=Path, help="write the counts, features and predictions here")
    p.add_argument("--keep", type=Path, help="keep the candidates in this folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.refit:
        return refit(args.refit)
    if args.model is None:
        p.error("--model is required (or --refit)")
    data = args.data or default_data()
    with tempfile.TemporaryDirectory(prefix="hagrid-cost.") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = candidates(args.model, data, args.candidates, args.seed, work)
        rows += [(str(f), f) for f in args.extra]
        config = SuiteConfig(data=str(data), split="val")
        feats = [board_cost.features(path) for _, path in rows]
        counted: dict[str, list[int]] = {}
        for cpu in parse_cpus(args.cpus):
            _, _, out = count_on(cpu, [Target(str(path), str(path)) for _, path in rows], config, args.frames, 1)
            counted[cpu.name] = [int((r.get("instructions") or {}).get("infer", 0)) for r in out]
    result: dict = {"rows": [{"name": n, "path": str(p), "features": f}
                             for (n, p), f in zip(rows, feats)],  # noqa: B905 (Python 3.8: one feature row per file)
                    "counted": counted, "coefficients": {}}
    for cpu, counts in counted.items():
        coef = board_cost.COEFFICIENTS.get(cpu)
        if args.fit:
            fit_rows = [k for k in range(len(rows) - len(args.extra)) if k % 2 == 0]
            weights = _weights([name for name, _ in rows])
            coef = board_cost.fit([feats[k] for k in fit_rows], [counts[k] for k in fit_rows],
                                  [weights[k] for k in fit_rows])
            result["coefficients"][cpu] = coef
            print(f"{cpu}: fitted on rows {fit_rows}: {json.dumps({k: float(f'{v:.6g}') for k, v in coef.items()})}")
        worst = 0.0
        for k, ((name, _), f, n) in enumerate(zip(rows, feats, counts)):  # noqa: B905 (Python 3.8; equal lengths)
            pred = sum(coef[x] * f[x] for x in board_cost.FEATURES) if coef else float("nan")
            held = not args.fit or k % 2 == 1 or k >= len(rows) - len(args.extra)
            err = _line(cpu, k, "check" if held else "fit  ", n, pred, name)
            worst = max(worst, err) if held and n else worst
        print(f"{cpu}: largest error on the checked rows {100 * worst:.1f} %")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
