"""``hagrid-edge build``: the Jetson's TensorRT engine of a shipped ONNX, built once into the user's cache."""

from __future__ import annotations

import argparse

from hagrid_edge.board import JETSON_PRECISION, MAIN_ONNX
from hagrid_edge.deploy.jetson.engine_meta import PRECISIONS
from hagrid_edge.paths import resolve_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build the TensorRT engine `run` uses on a Jetson (cached, reused)",
                       description="Build a TensorRT engine on the Jetson that will run it, into "
                                   "$XDG_CACHE_HOME/hagrid-edge/engines/ (~/.cache/hagrid-edge/engines/) beside its "
                                   "record (TensorRT version, GPU, precision, the ONNX's sha256). A cached engine "
                                   "whose record matches is reused; one from another TensorRT, GPU or ONNX is "
                                   "rebuilt. `hagrid-edge run` without --engine then runs it, and --engine NAME.trt "
                                   "finds it by name.")
    p.add_argument("--model", type=resolve_model, default=MAIN_ONNX,
                   help=f"the ONNX to build: a path, or the name of a shipped model (default: {MAIN_ONNX}, "
                        "the main job)")
    p.add_argument("--precision", choices=PRECISIONS, default=JETSON_PRECISION,
                   help=f"engine precision (default: {JETSON_PRECISION}; int8 needs a QDQ ONNX, e.g. calibrate's "
                        "--targets onnx-int8)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cached engine is current")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hagrid_edge.deploy.jetson.engine_cache import ensure_engine
    from hagrid_edge.errors import HagridEdgeError

    onnx = Path(args.model)
    if onnx.suffix.lower() != ".onnx" or not onnx.is_file():
        raise HagridEdgeError(f"--model {args.model}: not an ONNX file (a path, or a shipped model's name)")
    engine, reason = ensure_engine(onnx, args.precision, force=args.force)
    print(f"{engine}: {'built' if reason else 'up to date, reused'} ({args.precision} engine of {onnx.name}"
          f"{'; ' + reason if reason else ''})")
    return 0
