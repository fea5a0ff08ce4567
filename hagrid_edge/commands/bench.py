"""``hagrid-edge bench``: latency, accuracy, size and memory of every artifact, one report, a CI gate."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import REPO_ROOT

DEFAULT_BASELINE = REPO_ROOT / "benchmarks" / "baseline.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark artifacts: latency, mAP / F1, size, memory; report + regression gate",
        description="Measure every artifact on the same real HaGRID images through the deployed pipeline: "
                    "COCO mAP (gestures and hands) or F1, the drop against its FP32 source, latency "
                    "(inference alone and pre+infer+post, batch 1), size and peak memory. Writes report.json, "
                    "report.md and latency_vs_map.png into --report, and prints the table.",
        epilog="A two-stage row is DETECTOR+CLASSIFIER (e.g. hand_detector.onnx+crops_classifier.onnx). "
               "Merge reports from several devices: hagrid-edge bench --merge host.json pi.json --report DIR.")
    p.add_argument("--model", nargs="+", default=[], metavar="FILE",
                   help="artifacts to benchmark, one row each; DET+CLS for a detector with a crop classifier")
    p.add_argument("--latency-only", nargs="+", default=[], metavar="FILE",
                   help="models without a spec (e.g. MediaPipe's palm detector): latency of the raw model only")
    p.add_argument("--data", help="HaGRID data root")
    p.add_argument("--split", default="val", help="annotation split (default: val)")
    p.add_argument("--report", required=True, metavar="DIR", help="folder for report.json, report.md and the plot")
    p.add_argument("--task", choices=("gestures", "hands"),
                   help="score detectors on this task only (default: every task the model's labels allow)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per latency figure (default: 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default: 10)")
    p.add_argument("--min-time", type=float, default=0.0, metavar="S",
                   help="keep timing past --runs until this many seconds are measured (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="runtime and OpenCV threads, fixed (default: 1)")
    p.add_argument("--limit", type=int, help="score only the first N images")
    p.add_argument("--machine", metavar="LABEL", help="this device's name in (merged) tables (default: host name)")
    p.add_argument("--reference", action="append", default=[], metavar="INT8=FP32",
                   help="the FP32 artifact an artifact was made from, where its spec's provenance does not say; "
                        "a pair's FP32 pair as DET+CLS=FP32_DET+FP32_CLS; repeat it for a second choice (the "
                        "first one benchmarked on a device is used, e.g. the ONNX pair on the host, its "
                        "FP16-weight TFLite pair on an emulated Pi)")
    p.add_argument("--held-apart", action="store_true",
                   help="score on the photos no choice was made on: the half of val's users that calibrate "
                        "reports on for a model trained on train (quantize/photo_sets.py), not all of --split")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="95%% intervals of every mAP from N resamples of the photos' users (default: 0, none)")
    p.add_argument("--agreement", action="store_true",
                   help="INT8 rows: agreement with their FP32 row (mAP of their detections against the FP32 "
                        "row's own at its operating threshold)")
    p.add_argument("--timeout", type=float, default=900.0, metavar="S", help="limit per row (default: 900)")
    p.add_argument("--gate", action="store_true", help="exit 1 when the report regresses against --baseline")
    p.add_argument("--baseline", default=str(DEFAULT_BASELINE), metavar="FILE",
                   help="accepted figures for --gate (default: benchmarks/baseline.json)")
    p.add_argument("--write-baseline", metavar="FILE", help="save this run's figures as a new baseline")
    p.add_argument("--emulate", metavar="CPUS",
                   help="also count guest instructions per frame and stage on emulated Raspberry Pi CPUs "
                        "(pi4,pi5: qemu-aarch64 user mode on a Pi's Debian 12 arm64 userland; a proxy, not a "
                        "latency); one extra device per CPU, whose INT8 instruction ratios --gate judges")
    p.add_argument("--emulate-frames", type=int, default=8, metavar="N",
                   help="real frames counted per artifact on each emulated CPU, after one warm-up frame (default: 8)")
    p.add_argument("--pareto", action="store_true",
                   help="add one Pareto table per device to report.md: its cost (ms on a measured device, "
                        "instructions on an emulated one) against gestures mAP50-95 and mAP50 and hands mAP50-95")
    p.add_argument("--merge", nargs="+", metavar="REPORT_JSON",
                   help="merge report.json files from several devices into one report (no benchmarking)")
    p.set_defaults(func=run)


def _positive(args: argparse.Namespace) -> None:
    for name in ("runs", "threads", "limit", "emulate_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise HagridEdgeError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
    if args.warmup < 0 or args.min_time < 0 or args.timeout <= 0:
        raise HagridEdgeError("--warmup and --min-time must be >= 0, --timeout > 0")
    if args.bootstrap < 0:
        raise HagridEdgeError(f"--bootstrap {args.bootstrap}: a number of resamples, 0 or more")
    if args.held_apart and args.split != "val":
        raise HagridEdgeError(f"--held-apart: its photos are half of val's users; it takes no --split {args.split}")


def _check_outputs(args: argparse.Namespace) -> None:
    """--report (a folder) and --write-baseline (a file) must be writable before anything is measured."""
    from pathlib import Path

    from hagrid_edge.paths import check_output_path, refuse_same_file

    report = Path(args.report)
    if report.exists() and not report.is_dir():
        raise HagridEdgeError(f"--report {report}: is a file; give a folder for report.json, report.md and the plot")
    check_output_path("--report", report / "report.json")
    if args.write_baseline:
        refuse_same_file("--write-baseline", args.write_baseline,
                         [("--baseline", args.baseline if args.gate else None),
                          *(("--merge", m) for m in args.merge or ())])
        check_output_path("--write-baseline", args.write_baseline)


def _references(pairs: list[str]) -> dict[tuple[str, ...], list[tuple[str, ...]]]:
    """--reference A=C or A+B=C+D: the artifacts' sha256s -> their FP32 sources' sha256s, in the order given."""
    from pathlib import Path

    from hagrid_edge.benchmarks.suite import split_pair
    from hagrid_edge.spec import sha256_file

    refs: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for pair in pairs:
        artifact, sep, source = pair.partition("=")
        if not sep or not artifact or not source:
            raise HagridEdgeError(f"--reference {pair!r}: expected ARTIFACT=FP32_SOURCE or DET+CLS=FP32_DET+FP32_CLS")
        sides = [[p for p in split_pair(side) if p] for side in (artifact, source)]
        if len(sides[0]) != len(sides[1]):
            raise HagridEdgeError(f"--reference {pair!r}: {len(sides[0])} artifact(s) against {len(sides[1])} "
                                  "source(s); a pair's reference is a pair (DET+CLS=FP32_DET+FP32_CLS)")
        for path in sides[0] + sides[1]:
            if not Path(path).is_file():
                raise HagridEdgeError(f"--reference {pair!r}: {path}: no such file")
        key = tuple(sha256_file(p) for p in sides[0])
        refs.setdefault(key, []).append(tuple(sha256_file(p) for p in sides[1]))
    return refs


def _merge(args: argparse.Namespace) -> dict:
    from hagrid_edge.benchmarks import report

    if (args.model or args.latency_only or args.gate or args.write_baseline or args.emulate or args.held_apart
            or args.bootstrap or args.agreement):
        raise HagridEdgeError("--merge combines existing reports: it takes no --model, --latency-only, --gate, "
                              "--write-baseline, --emulate, --held-apart, --bootstrap or --agreement")
    return report.merge([(path, report.load_report(path)) for path in args.merge])


def _bench(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from hagrid_edge.benchmarks import machine, report, suite
    from hagrid_edge.benchmarks.latency import LatencyConfig

    cpus = _emulated_cpus(args)
    if not args.model and not args.latency_only:
        raise HagridEdgeError("nothing to benchmark: give --model FILE... and/or --latency-only FILE...")
    if not args.data:
        raise HagridEdgeError("--data ROOT is required to benchmark (it is not needed with --merge)")
    latency = LatencyConfig(warmup=args.warmup, runs=args.runs, min_time_s=args.min_time, threads=args.threads)
    config = suite.SuiteConfig(args.data, args.split, (args.task,) if args.task else suite.ACCURACY_TASKS,
                               args.limit, latency, timeout_s=args.timeout, held_apart=args.held_apart,
                               bootstrap=args.bootstrap, agreement=args.agreement)
    samples = suite.bench_samples(config)  # a missing root or split fails here
    references = _references(args.reference)
    targets = suite.make_targets(args.model, args.latency_only)
    rows = suite.run_suite(targets, config, references, progress=lambda m: print(m, file=sys.stderr, flush=True))
    run_info = {"data": str(args.data), "data_name": Path(args.data).resolve().name, "split": args.split,
                "images": len(samples), "tasks": list(config.tasks), "held_apart": args.held_apart,
                "users": len({s.user_id or s.image_id for s in samples}), "bootstrap": args.bootstrap,
                "latency": {"warmup": latency.warmup, "runs": latency.runs, "min_time_s": latency.min_time_s,
                            "threads": latency.threads},
                "command": "hagrid-edge " + shlex.join(sys.argv[1:])}
    rep = report.build_report(rows, machine.describe(args.machine), run_info)
    if cpus:
        from hagrid_edge.benchmarks.emulate import emulated_reports

        for extra in emulated_reports(cpus, targets, config, references, frames=args.emulate_frames,
                                      host=args.machine, progress=lambda m: print(m, file=sys.stderr, flush=True)):
            report.add_machine(rep, *extra)
    return rep


def _emulated_cpus(args: argparse.Namespace) -> list:
    """The Pi CPU profiles of --emulate (checked before anything is measured)."""
    if not args.emulate:
        return []
    from hagrid_edge.deploy.rpi.emulate import parse_cpus

    return parse_cpus(args.emulate)


def run(args: argparse.Namespace) -> int:
    from hagrid_edge.benchmarks import gate, report
    from hagrid_edge.paths import write_text_atomic

    _positive(args)
    _check_outputs(args)
    rep = _merge(args) if args.merge else _bench(args)
    failures: list[str] = []
    if args.pareto:
        rep["pareto"] = True
    if args.gate:
        baseline = gate.load_baseline(args.baseline)
        checks, failures = gate.check(rep, baseline)
        rep["gate"] = {"baseline": str(args.baseline), "checks": checks, "failures": failures}
    paths = report.write(rep, args.report)
    print(paths["md"].read_text(encoding="utf-8"))
    print(f"bench: wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if args.write_baseline:
        new = gate.make_baseline(rep, command=rep["runs"][next(iter(rep["runs"]))]["command"])
        write_text_atomic(args.write_baseline, json.dumps(new, indent=1) + "\n")
        print(f"bench: baseline written to {args.write_baseline}", file=sys.stderr)
    if failures:
        for f in failures:
            print(f"hagrid-edge bench: gate: FAIL {f}", file=sys.stderr)
        return 1
    if args.gate:
        print(f"bench: gate passed ({rep['gate']['checks']} checks against {args.baseline})", file=sys.stderr)
    if rep["rows"] and all(r.get("error") for r in rep["rows"]):
        print("hagrid-edge bench: error: every row failed; the report lists why", file=sys.stderr)
        return 1
    return 0
