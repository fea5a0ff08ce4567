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

from hagrid_edge.deploy.common.homeassistant import HomeAssistant, default_node_id
from hagrid_edge.deploy.common.hooks import HOOK_TIMEOUT_S, MAX_RUNNING, SHUTDOWN_GRACE_S
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.flags import non_negative_int, positive_float, positive_int, ranged, unit_interval
from hagrid_edge.paths import resolve_model

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
    p.add_argument("--engine", type=resolve_model,
                   help="detector artifact: .trt/.engine, .tflite or .onnx; a path, or a shipped model's name "
                        "(default: this board's main pipeline: gesture_detector.onnx on x86_64, its INT8 .tflite "
                        "on a Pi 5 and other Arm boards, FP16 .tflite on a Pi 4, the engine of hagrid-edge build "
                        "on a Jetson)")
    p.add_argument("--classifier", type=resolve_model,
                   help="hand-crop gesture classifier run on every detected hand (two-stage)")
    p.add_argument("--spec", help="spec file for an engine with none embedded or beside it")
    p.add_argument("--classifier-spec", help="spec file for the classifier")
    p.add_argument("--landmarks", nargs="?", const="", metavar="FILE", type=resolve_model,
                   help="also find 21 hand landmarks on every hand (MediaPipe's hand landmark model; without "
                        "FILE the shipped assets/models/hand_landmark_lite.tflite, which needs the [tflite] extra)")
    p.add_argument("--source", required=True,
                   help="csi://N, usb://N, /dev/videoN, rtsp://..., a video file, an image folder, or - (stdin)")
    p.add_argument("--output", action="append", metavar="FILE_OR_URI",
                   help="annotated video (.mp4, .avi, .mkv, .mov), renamed into place when the run ends, also after "
                        "an error (an earlier file is kept if the video cannot be written whole, e.g. on a full "
                        "disk); rtsp://[HOST][:PORT]/PATH: serve it as H.264 over RTSP (no HOST: every interface; "
                        "port 8554); http://[HOST][:PORT]: a live page with the video, the events, FPS and stage "
                        "times (no HOST: 127.0.0.1 only, http://0.0.0.0:PORT for the network; port 8080). "
                        "Repeatable. A slow or absent viewer never slows the run: it misses frames (counted)")
    p.add_argument("--events", action="append", metavar="FILE_OR_URI",
                   help="gesture events as JSON lines (- for stdout), each written as it happens: a run that is "
                        "killed keeps every event it reported; or mqtt://[user[:pass]@]HOST[:PORT]/TOPIC[?queue=N]: "
                        "one message per event, QoS 1 (the password from $HAGRID_EDGE_MQTT_PASSWORD when set; needs "
                        "the [mqtt] extra). Repeatable")
    p.add_argument("--homeassistant", nargs="?", const="homeassistant", metavar="PREFIX",
                   help="with one --events mqtt://...: publish Home Assistant MQTT discovery (retained) so every "
                        "gesture is a device trigger of a hagrid-edge device (discovery prefix: default homeassistant)")
    p.add_argument("--ha-node-id", metavar="ID",
                   help="the Home Assistant device's id in discovery topics (default: this host's name)")
    p.add_argument("--summary", help="also write the run summary as JSON to this file (also when the run fails)")
    p.add_argument("--headless", action="store_true", help="never open a window (the default without a display)")
    p.add_argument("--threads", type=positive_int, help="runtime threads (ONNX Runtime / LiteRT XNNPACK), >= 1")
    p.add_argument("--device", default="cpu", help="ONNX Runtime device: cpu, cuda or tensorrt (default: cpu)")
    p.add_argument("--score-threshold", type=unit_interval,
                   help="detector score threshold in [0, 1] (default: the spec's)")
    p.add_argument("--on-gesture", action="append", default=[], metavar="CMD_OR_MODULE:FUNCTION",
                   help="on each gesture start, run a command (event in $HAGRID_EDGE_EVENT) or call a Python "
                        "function with the event dict; repeatable. A command's output goes to stderr")
    p.add_argument("--hook-timeout", type=ranged(float, 0, 3600, low_open=True), default=HOOK_TIMEOUT_S,
                   metavar="SECONDS", help=f"a hook still running after this long is killed, with its process "
                                           f"group; in (0, 3600] (default {HOOK_TIMEOUT_S:g}). At the end of a run "
                                           f"hooks get {SHUTDOWN_GRACE_S:g} s more at most")
    p.add_argument("--max-hooks", type=ranged(int, 1, 64), default=MAX_RUNNING, metavar="N",
                   help=f"hooks running at once, in [1, 64] (default {MAX_RUNNING}); later ones wait, and are "
                        "skipped (counted in the summary) when too many events wait")
    g = p.add_argument_group("temporal logic")
    g.add_argument("--debounce-n", type=positive_int, help="frames that must show a gesture ... (default 3; 1 for an "
                                                  "image folder, whose photos are unrelated stills)")
    g.add_argument("--debounce-m", type=positive_int, help="... among the last M frames (default 5; image folder 1)")
    g.add_argument("--debounce-k", type=positive_int, help="frames without it that end it (default 5; image folder 1)")
    g.add_argument("--track-iou", type=ranged(float, 0, 1, low_open=True), default=0.3,
                   help="IoU that links a box to a track, in (0, 1] (default 0.3)")
    g.add_argument("--track-max-age", type=non_negative_int, default=5,
                   help="frames a track survives unseen, >= 0 (default 5)")
    c = p.add_argument_group("capture and output")
    c.add_argument("--width", type=positive_int, help="camera capture width, >= 1")
    c.add_argument("--height", type=positive_int, help="camera capture height, >= 1")
    c.add_argument("--output-fps", type=ranged(float, 0, 1000, low_open=True),
                   help="frame rate of --output, in (0, 1000] (default: the source's, else 30)")
    c.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames, N >= 1")
    c.add_argument("--status-every", type=positive_float, metavar="SECONDS",
                   help="log a one-line JSON status (frames, events, queue lengths, memory) this often, > 0")
    p.set_defaults(func=run)


def check_paths(args: argparse.Namespace) -> None:
    """Refuse outputs that are inputs (or each other), folders, or in places that cannot be written,
    before any model is loaded or any file is touched."""
    from hagrid_edge.deploy.common.output_uris import parse_outputs
    from hagrid_edge.paths import check_output_path, refuse_same_file

    inputs = [("--engine", args.engine), ("--classifier", args.classifier), ("--spec", args.spec),
              ("--classifier-spec", args.classifier_spec), ("--landmarks", args.landmarks or None)]
    if args.source != "-" and "://" not in args.source and not args.source.startswith("/dev/"):
        inputs.append(("--source", args.source))
    events = [("--events", uri) for uri in args.events or [] if uri != "-" and "://" not in uri]
    files = [("--output", t.path) for t in parse_outputs(args.output) if t.scheme == "file"]
    outputs = files + [(flag, path) for flag, path in (("--summary", args.summary),) if path] + events
    for k, (flag, path) in enumerate(outputs):
        refuse_same_file(flag, path, inputs + outputs[:k])
        check_output_path(flag, path)


def check_events_args(args: argparse.Namespace) -> HomeAssistant | None:
    """The ``--events`` URIs and ``--homeassistant``: each broker connected to once, so that a wrong URI, a
    broker away or refused credentials end the run at start, in one line."""
    from hagrid_edge.deploy.common.event_sinks import check_events

    if args.ha_node_id is not None and args.homeassistant is None:
        raise HagridEdgeError(f"--ha-node-id {args.ha_node_id}: only with --homeassistant")
    homeassistant = None
    if args.homeassistant is not None:
        homeassistant = HomeAssistant(args.homeassistant, args.ha_node_id or default_node_id())
    check_events(args.events or [], homeassistant)
    return homeassistant


def run(args: argparse.Namespace) -> int:
    import cv2

    from hagrid_edge.deploy.common.debounce import DebounceConfig
    from hagrid_edge.deploy.common.output_uris import check_output, parse_outputs
    from hagrid_edge.deploy.common.outputs import has_display
    from hagrid_edge.deploy.common.runner import RunOptions, run_loop
    from hagrid_edge.deploy.common.sources import ImageFolderSource, parse_source
    from hagrid_edge.deploy.common.summary import Summary
    from hagrid_edge.landmarks import DEFAULT_LANDMARKS, open_landmarker
    from hagrid_edge.paths import write_text_atomic
    from hagrid_edge.pipeline import load_pipeline

    # our own messages name the source; OpenCV 4.x (JetPack's, Pi OS's) has setLogLevel, 5.x cv2.utils.logging
    quiet = getattr(getattr(cv2.utils, "logging", None), "setLogLevel", None)
    (quiet or cv2.setLogLevel)(2)  # 2: errors only, in both numberings
    if logging.getLogger().handlers == []:
        logging.basicConfig(level=logging.INFO, format="hagrid-edge run: %(message)s", stream=sys.stderr)
    log = logging.getLogger("hagrid_edge.run")
    if args.engine is None:
        from hagrid_edge.board import default_engine, detect_board

        if args.classifier:
            raise HagridEdgeError("--classifier needs --engine (the hand detector it runs behind)")
        args.engine, why = default_engine(detect_board())
        log.info("%s", why)
    for target in parse_outputs(args.output):  # a server's host resolves, its port is free
        check_output(target.uri)
    check_paths(args)
    homeassistant = check_events_args(args)  # brokers answer before any model loads
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
                      events=args.events, homeassistant=homeassistant, hooks=args.on_gesture, show=show, output_fps=args.output_fps,
                      max_frames=args.max_frames, status_every=args.status_every, hook_timeout=args.hook_timeout,
                      max_hooks=args.max_hooks)
    source.open()
    summary = Summary(source.uri)
    try:
        with stop_on_signals(log) as (stop, reason):
            log.info("running %s%s%s on %s", args.engine, f" + {args.classifier}" if args.classifier else "",
                     " + landmarks" if landmarker else "", args.source)
            run_loop(pipeline, source, opts, stop, reason, landmarker, summary)
    except Exception:
        if args.summary and summary.frames:  # what the run did before it failed
            try:
                write_text_atomic(args.summary, json.dumps(summary.to_dict(), indent=1) + "\n")
            except OSError as e:
                log.warning("--summary %s: cannot write it (%s)", args.summary, e.strerror)
        raise
    if args.summary:  # before printing: a closed stdout must not cost the summary file
        write_text_atomic(args.summary, json.dumps(summary.to_dict(), indent=1) + "\n")
    print(summary.format(), file=sys.stderr if "-" in (args.events or []) else sys.stdout, flush=True)
    return 0


@contextlib.contextmanager
def stop_on_signals(log: logging.Logger) -> Iterator[tuple[threading.Event, list[str]]]:
    """SIGINT/SIGTERM set the yielded event and name themselves in the list; a second signal while the
    run finishes (a second or so at most: hooks get 1 s) is logged and ignored, so the video is
    finished and the summary written. The events are on disk as they happen in any case."""
    stop, reason = threading.Event(), []

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("%s: already stopping, finishing the outputs (Ctrl-\\ quits at once: the events so far "
                        "are kept, the video is not)",
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
