"""``hagrid-edge run`` speed: end-to-end FPS of the run loop vs inference-only FPS, and pre+post cost.

On a 640x480 video made from real HaGRID photos (the shipped sample, each held for several frames):

- inference-only FPS: the artifact's runtime calls alone, frames already decoded in memory, as the
  pipeline times them (``last_times.infer``: detector, plus the classifier on every hand);
- end-to-end FPS: the run loop, headless, reading and decoding the video on its capture thread,
  with pre/post-processing, tracking and debouncing (and, in a second pass, also drawing and writing
  the annotated video and the events file);
- pre + post milliseconds per 640x480 frame (the shared processing code, per stage).

Targets from the deploy issue: end-to-end >= 0.9x inference-only, pre + post < 1.5 ms per frame.
With ``--landmarks [FILE]`` every run-loop pass also runs the hand landmark stage on each hand; its
time is the ``landmarks`` row of the per-stage tables.

    python benchmarks/bench_run.py [--engine FILE --classifier FILE] [--landmarks [FILE]] [--hold 8] [--threads 2]
        [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

from hagrid_edge.deploy.common.runner import RunOptions, run_loop
from hagrid_edge.deploy.common.sources import open_source
from hagrid_edge.deploy.common.summary import Summary
from hagrid_edge.images import read_rgb
from hagrid_edge.landmarks import DEFAULT_LANDMARKS, Landmarker, open_landmarker
from hagrid_edge.paths import DEFAULT_DATA, DEFAULT_MODELS
from hagrid_edge.pipeline import load_pipeline
from hagrid_edge.processing import letterbox

SIZE = (640, 480)


def make_video(images: list[Path], hold: int, path: Path) -> list[np.ndarray]:
    """Each photo letterboxed to 640x480 and held ``hold`` frames; returns the RGB frames written."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, SIZE)
    frames = []
    for image in images:
        rgb = read_rgb(image)
        frame = letterbox(rgb, *SIZE, pad_value=0, interpolation=cv2.INTER_AREA)[0]
        for _ in range(hold):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            frames.append(frame)
    writer.release()
    return frames


def in_memory(pipeline, frames: list[np.ndarray]) -> dict[str, list[float]]:
    """Per-frame stage seconds of the pipeline on decoded frames, back to back."""
    times: dict[str, list[float]] = {"pre": [], "infer": [], "post": []}
    for frame in frames:
        pipeline(frame)
        for stage in times:
            times[stage].append(getattr(pipeline.last_times, stage))
    return times


def end_to_end(pipeline, video: Path, opts: RunOptions, landmarker: Landmarker | None) -> Summary:
    return run_loop(pipeline, open_source(str(video)), opts, threading.Event(), landmarker=landmarker)


def ms(values: list[float]) -> str:
    a = np.asarray(values) * 1e3
    return f"p50 {np.percentile(a, 50):7.2f}  p90 {np.percentile(a, 90):7.2f}  mean {a.mean():7.2f} ms"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default=str(DEFAULT_MODELS / "hand_detector.onnx"))
    p.add_argument("--classifier", default=str(DEFAULT_MODELS / "crops_classifier.onnx"),
                   help="crop classifier ('' for the detector alone)")
    p.add_argument("--images", default=str(DEFAULT_DATA / "hagrid_dataset_512"), help="folder of photos")
    p.add_argument("--landmarks", nargs="?", const=str(DEFAULT_LANDMARKS), metavar="FILE",
                   help=f"add the hand landmark stage (default model: {DEFAULT_LANDMARKS.name})")
    p.add_argument("--hold", type=int, default=8, help="frames each photo is shown")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating inference-only / end-to-end rounds")
    p.add_argument("--json", help="write the figures here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    images = sorted(Path(args.images).rglob("*.jpg"))
    if not images:
        raise SystemExit(f"--images {args.images}: no .jpg photos")
    pipeline = load_pipeline(args.engine, args.classifier or None, threads=args.threads)
    detector = load_pipeline(args.engine, threads=args.threads)
    landmarker = open_landmarker(args.landmarks, threads=args.threads) if args.landmarks else None
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        frames = make_video(images, args.hold, video)
        print(f"{len(frames)} frames 640x480 from {len(images)} HaGRID photos; {args.engine}"
              + (f" + {args.classifier}" if args.classifier else "") + f"; {args.threads} threads")
        in_memory(pipeline, frames[: 2 * args.hold])  # warm-up
        # Alternate the two measurements and take medians: the load of a shared machine drifts.
        mem, runs = [], []
        for _ in range(args.rounds):
            mem.append(in_memory(pipeline, frames))
            runs.append(end_to_end(pipeline, video, RunOptions(), landmarker))
        full = end_to_end(pipeline, video, RunOptions(output=str(Path(tmp) / "out.mp4"),
                                                      events=str(Path(tmp) / "ev.jsonl")), landmarker)
        det_only = in_memory(detector, frames)

    infer_runs = [len(frames) / sum(m["infer"]) for m in mem]
    e2e_runs = [r.fps for r in runs]
    infer_fps, e2e_fps = float(np.median(infer_runs)), float(np.median(e2e_runs))
    headless = runs[int(np.argsort(e2e_runs)[len(runs) // 2])]
    pre_post = np.concatenate([np.add(m["pre"], m["post"]) for m in mem])
    det_pre_post = np.add(det_only["pre"], det_only["post"])
    ratio = e2e_fps / infer_fps
    print(f"\ninference-only           {infer_fps:7.1f} FPS  (rounds: {', '.join(f'{v:.1f}' for v in infer_runs)})")
    print(f"end-to-end, headless     {e2e_fps:7.1f} FPS  (rounds: {', '.join(f'{v:.1f}' for v in e2e_runs)})"
          f"  = {ratio:.2f}x inference-only (target >= 0.9)")
    print(f"end-to-end, +video+events{full.fps:7.1f} FPS  = {full.fps / infer_fps:.2f}x  "
          f"({full.video_frames} video frames, {full.events} events)")
    print(f"pre+post per frame, pipeline:       {ms(pre_post)}")
    print(f"pre+post per frame, detector alone: {ms(det_pre_post)}  (target < 1.5 ms)")
    for name, s in (("headless, median round", headless), ("with video + events", full)):
        print(f"\nrun loop per-stage ms ({name}):")
        print(s.format().split("\n", 3)[3])
    if args.json:
        Path(args.json).write_text(json.dumps({
            "frames": len(frames), "engine": args.engine, "classifier": args.classifier,
            "landmarks": args.landmarks, "threads": args.threads,
            "inference_only_fps": infer_fps, "end_to_end_fps": e2e_fps, "ratio": ratio,
            "inference_only_rounds": infer_runs, "end_to_end_rounds": e2e_runs,
            "end_to_end_with_outputs_fps": full.fps,
            "pre_post_ms_p50": float(np.percentile(pre_post, 50) * 1e3),
            "detector_pre_post_ms_p50": float(np.percentile(det_pre_post, 50) * 1e3),
            "headless": headless.to_dict(), "with_outputs": full.to_dict()}, indent=1))


if __name__ == "__main__":
    main()
