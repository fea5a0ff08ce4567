"""``hagrid-edge run``: live gesture recognition on a camera, stream, video file or image folder."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

# Debounce (N of the last M frames start a gesture, K without end it): frames of a video or camera,
# or stills (an image folder: each photo is its own scene).
VIDEO_DEBOUNCE = (3, 5, 5)
STILLS_DEBOUNCE = (1, 1, 1)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a model on a camera, stream, video or image folder",
                       description="Detect hand gestures frame by frame with a .trt/.engine (TensorRT), .tflite "
                                   "(LiteRT) or .onnx (ONNX Runtime) artifact, alone or as hand detector + crop "
                                   "classifier; track hands, debounce gestures into events, write an annotated "
                                   "video and an events JSONL, run hooks on gestures.")
    p.add_argument("--engine", required=True, help="detector artifact: .trt/.engine, .tflite or .onnx")
    p.add_argument("--classifier", help="hand-crop gesture classifier run on every detected hand (two-stage)")
    p.add_argument("--spec", help="spec file for an engine with none embedded or beside it")
    p.add_argument("--classifier-spec", help="spec file for the classifier")
    p.add_argument("--landmarks", nargs="?", const="", metavar="FILE",
                   help="also find 21 hand landmarks on every hand (MediaPipe's hand landmark model; without "
                        "FILE the shipped assets/models/hand_landmark_lite.tflite, which needs the [tflite] extra)")
    p.add_argument("--source", required=True,
                   help="csi://N, usb://N, /dev/videoN, rtsp://..., a video file, an image folder, or - (stdin)")
    p.add_argument("--output", help="annotated video (.mp4, .avi, .mkv, .mov)")
    p.add_argument("--events", help="gesture events as JSON lines (- for stdout)")
    p.add_argument("--summary", help="also write the run summary as JSON to this file")
    p.add_argument("--headless", action="store_true", help="never open a window (the default without a display)")
    p.add_argument("--threads", type=int, help="runtime threads (ONNX Runtime / LiteRT XNNPACK)")
    p.add_argument("--device", default="cpu", help="ONNX Runtime device: cpu, cuda or tensorrt (default: cpu)")
    p.add_argument("--score-threshold", type=float, help="detector score threshold (default: the spec's)")
    p.add_argument("--on-gesture", action="append", default=[], metavar="CMD_OR_MODULE:FUNCTION",
                   help="on each gesture start, run a command (event in $HAGRID_EDGE_EVENT) or call a Python "
                        "function with the event dict; repeatable")
    g = p.add_argument_group("temporal logic")
    g.add_argument("--debounce-n", type=int, help="frames that must show a gesture ... (default 3; 1 for an "
                                                  "image folder, whose photos are unrelated stills)")
    g.add_argument("--debounce-m", type=int, help="... among the last M frames (default 5; image folder 1)")
    g.add_argument("--debounce-k", type=int, help="frames without it that end it (default 5; image folder 1)")
    g.add_argument("--track-iou", type=float, default=0.3, help="IoU that links a box to a track (default 0.3)")
    g.add_argument("--track-max-age", type=int, default=5, help="frames a track survives unseen (default 5)")
    c = p.add_argument_group("capture and output")
    c.add_argument("--width", type=int, help="camera capture width")
    c.add_argument("--height", type=int, help="camera capture height")
    c.add_argument("--output-fps", type=float, help="frame rate of --output (default: the source's, else 30)")
    c.add_argument("--max-frames", type=int, help="stop after N frames")
    c.add_argument("--status-every", type=float, metavar="SECONDS",
                   help="log a one-line JSON status (frames, events, queue lengths, memory) this often")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cv2

    from hagrid_edge.deploy.common.debounce import DebounceConfig
    from hagrid_edge.deploy.common.outputs import check_video_path, has_display
    from hagrid_edge.deploy.common.runner import RunOptions, run_loop
    from hagrid_edge.deploy.common.sources import ImageFolderSource, parse_source
    from hagrid_edge.errors import HagridEdgeError
    from hagrid_edge.landmarks import DEFAULT_LANDMARKS, open_landmarker
    from hagrid_edge.paths import write_text_atomic
    from hagrid_edge.pipeline import load_pipeline

    # our own messages name the source; OpenCV 4.x (JetPack's, Pi OS's) has setLogLevel, 5.x cv2.utils.logging
    quiet = getattr(getattr(cv2.utils, "logging", None), "setLogLevel", None)
    (quiet or cv2.setLogLevel)(2)  # 2: errors only, in both numberings
    if logging.getLogger().handlers == []:
        logging.basicConfig(level=logging.INFO, format="hagrid-edge run: %(message)s", stream=sys.stderr)
    log = logging.getLogger("hagrid_edge.run")
    if args.threads is not None and args.threads < 1:
        raise HagridEdgeError(f"--threads {args.threads}: must be at least 1")
    if args.output:
        check_video_path(args.output)
    show = not args.headless and has_display()
    if not args.headless and not show and os.environ.get("DISPLAY"):
        log.info("this OpenCV has no GUI (opencv-python-headless): running headless")
    pipeline = load_pipeline(args.engine, args.classifier, args.spec, args.classifier_spec, args.threads,
                             score_threshold=args.score_threshold, device=args.device)
    landmarker = None
    if args.landmarks is not None:
        landmarker = open_landmarker(args.landmarks or DEFAULT_LANDMARKS, threads=args.threads)
    source = parse_source(args.source, args.width, args.height)
    n, m, k = STILLS_DEBOUNCE if isinstance(source, ImageFolderSource) else VIDEO_DEBOUNCE
    debounce = DebounceConfig(_given(args.debounce_n, n), _given(args.debounce_m, m), _given(args.debounce_k, k))
    opts = RunOptions(debounce=debounce, track_iou=args.track_iou, track_max_age=args.track_max_age, output=args.output,
                      events=args.events, hooks=args.on_gesture, show=show, output_fps=args.output_fps,
                      max_frames=args.max_frames, status_every=args.status_every)
    source.open()
    with stop_on_signals(log) as (stop, reason):
        log.info("running %s%s%s on %s", args.engine, f" + {args.classifier}" if args.classifier else "",
                 " + landmarks" if landmarker else "", args.source)
        summary = run_loop(pipeline, source, opts, stop, reason, landmarker)
    if args.summary:  # before printing: a closed stdout must not cost the summary file
        write_text_atomic(args.summary, json.dumps(summary.to_dict(), indent=1) + "\n")
    print(summary.format(), file=sys.stderr if args.events == "-" else sys.stdout, flush=True)
    return 0


@contextlib.contextmanager
def stop_on_signals(log: logging.Logger) -> Iterator[tuple[threading.Event, list[str]]]:
    """SIGINT/SIGTERM set the yielded event and name themselves in the list; a second signal while the
    run finishes is logged and ignored, since cutting the cleanup short would discard the outputs."""
    stop, reason = threading.Event(), []

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("%s: already stopping, finishing the outputs (Ctrl-\\ quits without them)",
                        signal.Signals(signum).name)
            return
        reason.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop, reason
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
