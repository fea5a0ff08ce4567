"""``hagrid-edge doctor``: what this machine has for hagrid-edge, and the one fix for each problem.

One line per item, ``ok`` or ``problem`` first, then the item's name and what was found; a problem
line ends with ``fix: ...``. The last line sums up; the exit status is 1 when a problem blocks
``hagrid-edge run`` itself (numpy, OpenCV, the default pipeline's model or runtime), 0 otherwise: a
camera problem (picamera2, no GStreamer for ``csi://`` on a Jetson, no camera) is a problem line that
leaves files, streams and other cameras running. Every library is
imported inside its check, so one that fails to import is its own line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hagrid_edge.board import NUMPY_1, Board, import_fix
from hagrid_edge.errors import HagridEdgeError, first_line

KINDS = {"pi": "a Raspberry Pi", "jetson": "a Jetson", "x86_64": "an x86_64 machine", "other": "no board we know"}


@dataclass
class Check:
    item: str
    found: str
    fix: str = ""  # set: a problem, with its one fix
    blocks: bool = False  # the problem stops `hagrid-edge run` on this board

    def line(self) -> str:
        status = "problem" if self.fix else "ok"
        return f"{status:<7} {self.item}: {self.found}" + (f"; fix: {self.fix}" if self.fix else "")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what this board has for hagrid-edge, and the fix for each problem",
                       description="Print Python, numpy, OpenCV (GUI, GStreamer), the runtimes (ONNX Runtime, "
                                   "LiteRT, TensorRT, cuda-python), the board, its cameras, picamera2 and the "
                                   "pipeline `hagrid-edge run` picks without --engine: one line each, `ok` or "
                                   "`problem` first, a problem with its one fix. Exit 1 when a problem blocks "
                                   "running.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hagrid_edge.board import detect_board

    checks = diagnose(detect_board())
    for check in checks:
        print(check.line(), flush=True)
    problems = [c for c in checks if c.fix]
    blocking = [c.item for c in problems if c.blocks]
    if blocking:
        print(f"problem summary: {len(problems)} problem(s); {', '.join(blocking)} block running")
        return 1
    print(f"ok      summary: nothing blocks running ({len(problems)} other problem(s))")
    return 0


def diagnose(board: Board) -> list[Check]:
    """Every check, in the order printed."""
    from hagrid_edge import __version__
    from hagrid_edge.paths import DEFAULT_MODELS

    venv = sys.prefix != sys.base_prefix
    checks = [Check("python", f"{sys.version.split()[0]} at {sys.executable}"
                              f"{' (a venv)' if venv else ''}"),
              Check("hagrid-edge", f"{__version__} from {Path(__file__).resolve().parents[1]}, "
                                   f"models in {DEFAULT_MODELS}"),
              Check("board", f"{board.describe()}: {KINDS[board.kind]}")]
    numpy, check = _import("numpy", "numpy", board)
    checks.append(check)
    if numpy is not None:
        check.found = f"{numpy.__version__}, {origin(numpy.__file__)}"
        shadow = numpy_shadowed(numpy.__version__, Path(numpy.__file__).parent.parent, sys.path)
        if shadow:
            check.fix = NUMPY_1
            check.found += (f"; it shadows numpy {shadow[0]} in {shadow[1]}, which the compiled modules there "
                            "were built against (on a board: apt's OpenCV, picamera2's simplejpeg)")
    checks.append(_opencv(board))
    checks += _runtimes(board)
    picamera2, check = _import("picamera2", "picamera2", board)
    checks.append(check)
    checks.append(_cameras(board, picamera2))
    checks.append(_default(board))
    return checks


def origin(path: str | os.PathLike[str]) -> str:
    """Where an imported module comes from: this venv (pip), the system's apt packages, or elsewhere."""
    p = Path(path).resolve()
    if sys.prefix != sys.base_prefix and Path(sys.prefix).resolve() in p.parents:
        return f"pip, this venv ({p.parent})"
    if "dist-packages" in p.parts and not str(p).startswith("/usr/local/"):
        return f"system, apt ({p.parent})"
    return f"pip ({p.parent})"


def numpy_shadowed(version: str, location: Path, path: list[str]) -> tuple[str, Path] | None:
    """(version, folder) of a numpy 1.x that the loaded numpy 2 (in ``location``) hides from the modules
    installed beside it, found on ``path`` (``sys.path``) from its distribution record; None if none."""
    from importlib import metadata

    if int(version.split(".")[0]) < 2:
        return None
    for entry in path:
        folder = Path(entry or ".").resolve()
        if folder == location.resolve() or not folder.is_dir():
            continue
        for dist in metadata.distributions(path=[str(folder)]):
            other = dist.version or ""
            if (dist.metadata["Name"] or "").lower() == "numpy" and other.split(".")[0] == "1":
                return other, folder
    return None


def _import(module: str, item: str, board: Board) -> tuple[Any, Check]:
    """Import ``module``; a failure of any kind is a problem line with its fix. numpy and OpenCV block every
    run; picamera2 only the Pi's camera (files, USB cameras and streams still run)."""
    try:
        mod = importlib.import_module(module)
    except Exception as e:
        blocks = module in ("numpy", "cv2")
        if isinstance(e, ModuleNotFoundError) and e.name == module and not blocks and board.kind != "pi":
            return None, Check(item, "not installed (not needed: no Raspberry Pi camera here)")
        return None, Check(item, f"import failed: {type(e).__name__}: {first_line(e)}", import_fix(module, e, board),
                           blocks=blocks)
    return mod, Check(item, getattr(mod, "__version__", "imported"))


def build_info(text: str, key: str) -> str:
    """A value of ``cv2.getBuildInformation()``: ``GUI`` -> ``GTK3`` / ``NONE``, ``GStreamer`` -> ``YES (1.22.0)``.
    A heading with no value of its own (older OpenCV's GUI) gives its first sub-entry that says YES."""
    lines = text.splitlines()
    for k, line in enumerate(lines):
        name, sep, value = line.strip().partition(":")
        if sep and name.strip() == key:
            if value.strip():
                return value.strip()
            indent = len(line) - len(line.lstrip())
            for sub in lines[k + 1:]:
                if len(sub) - len(sub.lstrip()) <= indent:
                    break
                sub_name, _, sub_value = sub.strip().partition(":")
                if sub_value.strip().startswith("YES"):
                    return sub_name.strip()
            return "NONE"
    return "NONE"


def _opencv(board: Board) -> Check:
    cv2, check = _import("cv2", "opencv", board)
    if cv2 is None:
        return check
    info = cv2.getBuildInformation()
    gui, gstreamer = build_info(info, "GUI"), build_info(info, "GStreamer")
    check.found = f"{cv2.__version__}, {origin(cv2.__file__)}, GUI {gui}, GStreamer {gstreamer}"
    pip_headless = _dist_version("opencv-python-headless")
    system_cv2 = _system_cv2()
    if board.kind == "jetson" and not gstreamer.startswith("YES"):
        check.found += " (csi:// needs GStreamer)"
        check.fix = ("pip uninstall -y opencv-python-headless  (JetPack's OpenCV has GStreamer)" if system_cv2
                     else "sudo apt-get install -y nvidia-opencv")
    elif gui == "NONE" and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        check.found += "; on a desktop: no window will open"
        if system_cv2 and pip_headless:
            check.fix = "pip uninstall -y opencv-python-headless  (the system's OpenCV has a GUI)"
        else:
            check.fix = (f"pip uninstall -y opencv-python-headless && pip install "
                         f"'opencv-python=={pip_headless or cv2.__version__}'")
    return check


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _system_cv2() -> Path | None:
    """The system's own OpenCV bindings (apt / JetPack) on sys.path, beside a pip one or not."""
    for entry in sys.path:
        if "dist-packages" in Path(entry).parts and not entry.startswith("/usr/local/"):
            found = sorted(Path(entry).glob("cv2*"))
            if found:
                return found[0]
    return None


def _runtimes(board: Board) -> list[Check]:
    from hagrid_edge.board import default_pipeline

    needed = default_pipeline(board).runtime
    jetpack_cuda = "'cuda-python<12'" if sys.version_info < (3, 10) else "'cuda-python>=12,<13'"
    extra = "rpi" if board.kind == "pi" else "tflite"
    table: list[tuple[str, str, Callable[[], str], str]] = [
        ("onnxruntime", "ONNX Runtime", _onnxruntime, "pip install 'hagrid-edge'  (ONNX Runtime is in the core)"),
        ("litert", "LiteRT", _litert, f"pip install 'hagrid-edge[{extra}]'"),
        ("tensorrt", "TensorRT", _tensorrt, "sudo apt-get install -y python3-libnvinfer  (in a venv made with "
                                            "--system-site-packages)"),
        ("cuda-python", "TensorRT", _cuda_python, f"pip install 'hagrid-edge[jetson]' {jetpack_cuda}"),
    ]
    checks = []
    for item, runtime, probe, fix in table:
        try:
            checks.append(Check(item, probe()))
        except Exception as e:  # the _import_* helpers turn an ImportError into a HagridEdgeError
            absent = isinstance(e, (ImportError, HagridEdgeError))
            found = "not installed" if absent else f"import failed: {type(e).__name__}: {first_line(e)}"
            if runtime == needed:
                checks.append(Check(item, found, fix, blocks=True))
            else:
                checks.append(Check(item, f"{found} (not needed: the default runs {needed})"))
    return checks


def _onnxruntime() -> str:
    import onnxruntime

    return f"{onnxruntime.__version__}, providers {', '.join(onnxruntime.get_available_providers())}"


def _litert() -> str:
    try:
        importlib.import_module("ai_edge_litert.interpreter")
        return f"ai-edge-litert {_dist_version('ai-edge-litert')}"
    except ImportError:
        importlib.import_module("tflite_runtime.interpreter")  # the fallback the LiteRT adapter takes
        return f"tflite-runtime {_dist_version('tflite-runtime')} (ai-edge-litert runs INT8 about 10x faster)"


def _tensorrt() -> str:
    from hagrid_edge.deploy.jetson.tensorrt_backend import _import_tensorrt

    return str(_import_tensorrt().__version__)


def _cuda_python() -> str:
    from hagrid_edge.deploy.jetson.tensorrt_backend import _import_cudart

    runtime = _import_cudart()
    version = _dist_version("cuda-python") or _dist_version("cuda-bindings")
    return f"{version} ({runtime.__name__})"


def _cameras(board: Board, picamera2: Any) -> Check:
    nodes = sorted(Path("/dev").glob("video[0-9]*"), key=lambda p: int(p.name[5:]))
    named = []
    for node in nodes:
        try:
            name = (Path("/sys/class/video4linux") / node.name / "name").read_text(encoding="utf-8").strip()
        except OSError:
            name = ""
        named.append(f"{node}{f' ({name})' if name else ''}")
    found = ", ".join(named[:6]) + (f" and {len(named) - 6} more" if len(named) > 6 else "") or "no /dev/video*"
    if picamera2 is not None:
        try:
            cams = picamera2.Picamera2.global_camera_info()
            found += "; picamera2: " + (", ".join(str(c.get("Model", c)) for c in cams) or "no camera")
        except Exception as e:
            found += f"; picamera2 cannot list cameras ({type(e).__name__}: {e})"
    if not named and board.kind in ("pi", "jetson"):
        return Check("cameras", found, "connect a camera (CSI ribbon or USB), then: hagrid-edge doctor")
    return Check("cameras", found)


def _default(board: Board) -> Check:
    from hagrid_edge.board import default_pipeline

    chosen = default_pipeline(board)
    found = f"run without --engine opens {chosen.path} with {chosen.runtime} ({chosen.why})"
    if chosen.path.is_file():
        return Check("default", found + ", present")
    if board.kind == "jetson":
        return Check("default", found + ", not built yet", "hagrid-edge build", blocks=True)
    return Check("default", found + ", missing", "pip install --force-reinstall hagrid-edge", blocks=True)
