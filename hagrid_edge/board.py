"""Which board this is, and the pipeline ``hagrid-edge run`` runs on it when no ``--engine`` is given.

Read from files the kernel and the board's OS provide (``/proc/device-tree/model``, ``.../compatible``,
``/proc/cpuinfo``, ``/etc/nv_tegra_release``), under a ``root`` folder so a test can point it at another
board's files. Nothing heavy is imported: ``doctor`` and ``run`` call it before any runtime loads.
"""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hagrid_edge.deploy.jetson.engine_cache import cached_engine
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import DEFAULT_MODELS

# The main job (assets/models/README.md) in the form each board runs best.
MAIN_ONNX = "gesture_detector.onnx"
PI_INT8 = "gesture_detector_int8.tflite"  # Pi 5: the A76's int8 dot product makes INT8 0.63x FP32's work
PI_FP16 = "gesture_detector_fp16.tflite"  # Pi 4 and older: no int8 dot product, INT8 saves nothing
# No QDQ ONNX of the one-stage detector ships (its INT8 lost 0.83 mAP50-95 on new people): FP16 engine.
JETSON_PRECISION = "fp16"
PI_MODEL = re.compile(r"Raspberry Pi (?:Compute Module |Zero )?(\d)")
# What an extension module built against numpy 1 raises under numpy 2 (picamera2's simplejpeg, apt's cv2).
NUMPY_ABI = ("numpy.dtype size changed", "compiled using NumPy 1.x", "_ARRAY_API",
             "numpy.core.multiarray failed to import")
NUMPY_1 = "pip install 'numpy<2'"


@dataclass(frozen=True)
class Board:
    kind: str  # "pi", "jetson", "x86_64" or "other"
    model: str  # what the board calls itself (device-tree model), else the CPU architecture
    machine: str  # CPU architecture, e.g. aarch64
    pi_generation: int | None = None  # 5: Pi 5 / 500 / CM5; 4: Pi 4 / 400 / CM4; 2: Zero 2; None: older

    def describe(self) -> str:
        return self.model if self.model == self.machine else f"{self.model} ({self.machine})"


@dataclass(frozen=True)
class DefaultPipeline:
    """What ``run`` opens without ``--engine``: the model file, its runtime, and why it is this board's."""

    path: Path
    runtime: str
    why: str


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def detect_board(root: str | Path = "/", machine: str | None = None) -> Board:
    """This machine (or the one whose files lie under ``root``): a Raspberry Pi, a Jetson, x86_64 or other."""
    root = Path(root)
    machine = machine or platform.machine()
    model = _read(root / "proc/device-tree/model").replace("\0", "").strip()
    if not model:  # older Pi kernels without a device tree name the board in cpuinfo
        found = re.search(r"^Model\s*:\s*(.+)$", _read(root / "proc/cpuinfo"), re.M)
        model = found.group(1).strip() if found else ""
    compatible = _read(root / "proc/device-tree/compatible").split("\0")
    if (root / "etc/nv_tegra_release").is_file() or any(c.startswith("nvidia,tegra") for c in compatible):
        return Board("jetson", model or "NVIDIA Jetson", machine)
    pi = PI_MODEL.match(model)
    if model.startswith("Raspberry Pi"):
        return Board("pi", model, machine, int(pi.group(1)) if pi else None)
    return Board("x86_64" if machine in ("x86_64", "AMD64") else "other", model or machine, machine)


def default_pipeline(board: Board) -> DefaultPipeline:
    """The board's main pipeline, as the board guides and the README's table give it."""
    if board.kind == "jetson":
        return DefaultPipeline(cached_engine(MAIN_ONNX, JETSON_PRECISION), "TensorRT", f"the {JETSON_PRECISION.upper()} engine `hagrid-edge build` "
                                                   f"makes from {MAIN_ONNX} on this board")
    if board.kind == "x86_64":
        return DefaultPipeline(DEFAULT_MODELS / MAIN_ONNX, "ONNX Runtime", "the main job's FP32 graph")
    if board.kind == "pi" and (board.pi_generation or 0) < 5:
        return DefaultPipeline(DEFAULT_MODELS / PI_FP16, "LiteRT", "no int8 dot product before the Pi 5: FP16 "
                                                                   "weights cost least")
    return DefaultPipeline(DEFAULT_MODELS / PI_INT8, "LiteRT", "INT8: 0.63x FP32's instructions on a Pi 5")


def default_engine(board: Board) -> tuple[str, str]:
    """(model path, the one log line saying which default was chosen and why) for ``run`` without ``--engine``;
    a Jetson whose engine is not built yet is a ``HagridEdgeError`` saying to run ``hagrid-edge build``."""
    chosen = default_pipeline(board)
    if not chosen.path.is_file():
        if board.kind == "jetson":
            raise HagridEdgeError(f"no --engine: this Jetson runs the TensorRT engine of {MAIN_ONNX}, not built "
                                  f"yet ({chosen.path}); build it once with: hagrid-edge build")
        raise HagridEdgeError(f"no --engine: the default model {chosen.path} is missing; reinstall hagrid-edge")
    return str(chosen.path), (f"no --engine: {board.describe()}, so {chosen.path.name} with {chosen.runtime} "
                              f"({chosen.why})")


def import_fix(module: str, error: BaseException, board: Board) -> str:
    """The one fix for a failed import of a board's system module (numpy, cv2, picamera2)."""
    text = str(error)
    if any(mark in text for mark in NUMPY_ABI):  # built against numpy 1, run under numpy 2
        if board.kind == "pi" and _system_site():  # the venv's numpy hides Raspberry Pi OS's: drop it
            return "pip uninstall -y numpy (the venv's numpy hides the system's, which its modules are built against)"
        return NUMPY_1
    if module == "picamera2":
        if isinstance(error, ModuleNotFoundError) and sys.prefix != sys.base_prefix and not _system_site():
            return ("this venv cannot see the system's packages: make it again with python3 -m venv "
                    "--system-site-packages")
        return "sudo apt-get install -y python3-picamera2"
    if module == "cv2" and board.kind == "jetson":
        return "sudo apt-get install -y nvidia-opencv"
    if module == "cv2" and board.kind == "pi":
        return "sudo apt-get install -y python3-opencv"
    return f"pip install --force-reinstall {'opencv-python-headless' if module == 'cv2' else module}"


def _system_site() -> bool:
    """Whether this venv was made with --system-site-packages (pyvenv.cfg)."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    try:
        text = cfg.read_text(encoding="utf-8")
    except OSError:
        return False
    return re.search(r"^include-system-site-packages\s*=\s*true", text, re.M | re.I) is not None
