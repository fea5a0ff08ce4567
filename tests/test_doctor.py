"""``hagrid-edge doctor`` on this machine, and on the same machine with a problem made for real: the TFLite
converter's own environment (numpy 1.26, built by ``python -m hagrid_edge.quantize.tflite_env`` before the
tests in CI) put behind this venv on ``sys.path``, as a ``--system-site-packages`` venv puts a board's
system packages behind its own numpy 2; a desktop's DISPLAY with the headless pip OpenCV."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import missing

from hagrid_edge.board import NUMPY_1, detect_board, import_fix
from hagrid_edge.commands.doctor import build_info, numpy_shadowed
from hagrid_edge.paths import DEFAULT_MODELS, REPO_ROOT
from hagrid_edge.quantize.tflite_env import env_dir

ITEMS = ["python", "hagrid-edge", "board", "numpy", "opencv", "onnxruntime", "litert", "tensorrt", "cuda-python",
         "picamera2", "cameras", "default", "summary"]
# doctor in a child whose sys.path ends with FOLDER, the way a --system-site-packages venv sees the system's
DOCTOR_WITH_SYSTEM = "import sys; sys.path.append({folder!r}); from hagrid_edge.cli import main; sys.exit(main(['doctor']))"


def doctor(env: dict[str, str] | None = None, code: str | None = None) -> tuple[int, dict[str, str]]:
    """(exit status, item -> its line) of a doctor run in a child process."""
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "hagrid_edge.cli", "doctor"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                       env={**os.environ, **(env or {})})
    lines = p.stdout.splitlines()
    assert p.stderr == "" and all(li.split()[0] in ("ok", "problem") for li in lines), p.stdout + p.stderr
    items = {li.split()[1].rstrip(":"): li for li in lines}
    assert list(items) == ITEMS, lines  # one line per item, always in this order
    return p.returncode, items


def converter_site() -> Path:
    env = env_dir()
    sites = sorted(env.glob("lib/python3*/site-packages"))
    if not sites or not (sites[0] / "numpy").is_dir():
        missing(f"{env}: the TFLite converter's environment is not built (python -m hagrid_edge.quantize.tflite_env)")
    return sites[0]


def test_doctor_here():
    rc, items = doctor(env={"DISPLAY": "", "WAYLAND_DISPLAY": ""})
    assert rc == 0 and items["summary"].startswith("ok      summary: nothing blocks running")
    assert items["python"].startswith(f"ok      python: {sys.version.split()[0]} at ")
    venv = Path(sys.prefix)
    assert items["numpy"] == f"ok      numpy: {np.__version__}, pip, this venv ({Path(np.__file__).parent})"
    gui, gst = build_info(cv2.getBuildInformation(), "GUI"), build_info(cv2.getBuildInformation(), "GStreamer")
    assert (gui, gst) == ("NONE", "NO")  # the lock's opencv-python-headless 5.0.0
    assert items["opencv"].startswith(f"ok      opencv: {cv2.__version__}, pip, this venv") and "GUI NONE" in items["opencv"]
    assert f"ai-edge-litert {metadata.version('ai-edge-litert')}" in items["litert"]
    assert items["tensorrt"] == "ok      tensorrt: not installed (not needed: the default runs ONNX Runtime)"
    assert items["board"] == f"ok      board: {detect_board().describe()}: an x86_64 machine"
    assert str(venv) in items["python"]
    assert items["default"].startswith(f"ok      default: run without --engine opens {DEFAULT_MODELS / 'gesture_detector.onnx'}"
                                       " with ONNX Runtime") and items["default"].endswith(", present")


def test_numpy_2_shadowing_a_numpy_1_is_one_problem_with_its_fix():
    site = converter_site()
    rc, items = doctor(code=DOCTOR_WITH_SYSTEM.format(folder=str(site)), env={"DISPLAY": ""})
    shadowed = next(metadata.distributions(path=[str(site)], name="numpy")).version
    assert shadowed.startswith("1.")
    assert items["numpy"].startswith(f"problem numpy: {np.__version__}, pip, this venv")
    assert f"it shadows numpy {shadowed} in {site}" in items["numpy"]
    assert items["numpy"].endswith(f"; fix: {NUMPY_1}")
    assert rc == 0 and "1 other problem(s)" in items["summary"]  # what breaks because of it is its own line
    # the detection alone, on the same real folders; a numpy 1 that is loaded shadows nothing that matters
    here = Path(np.__file__).parent.parent
    assert numpy_shadowed(np.__version__, here, [str(here), str(site)]) == (shadowed, site)
    assert numpy_shadowed(shadowed, site, [str(here), str(site)]) is None
    assert numpy_shadowed(np.__version__, here, [str(here)]) is None


def test_headless_opencv_on_a_desktop_names_the_opencv_with_a_window():
    rc, items = doctor(env={"DISPLAY": ":0"})
    wheel = metadata.version("opencv-python-headless")
    assert items["opencv"].startswith("problem opencv:") and "on a desktop: no window will open" in items["opencv"]
    assert items["opencv"].endswith(f"fix: pip uninstall -y opencv-python-headless && pip install "
                                    f"'opencv-python=={wheel}'")
    assert rc == 0  # run still runs, headless


def test_build_information_of_an_opencv_with_a_gui():
    """The converter environment's opencv-python 4.11 (a GUI build), read by its own Python."""
    env = env_dir()
    converter_site()
    text = subprocess.check_output([str(env / "bin" / "python"), "-c", "import cv2; print(cv2.getBuildInformation())"],
                                   text=True, timeout=300)
    assert build_info(text, "GUI") in ("QT5", "GTK3", "QT6", "GTK2")
    assert build_info(text, "GStreamer").split()[0] in ("YES", "NO")


def test_import_failures_name_their_fix():
    board = detect_board()
    with pytest.raises(ModuleNotFoundError) as absent:
        import picamera2  # noqa: F401 (not on this machine)
    assert "python3-picamera2" in import_fix("picamera2", absent.value, board) or "system-site-packages" in \
        import_fix("picamera2", absent.value, board)
    # picamera2's simplejpeg (built against numpy 1) under numpy 2, as Raspberry Pi OS users report it
    abi = ValueError("numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, "
                     "got 88 from PyObject")
    assert import_fix("picamera2", abi, board) == NUMPY_1


def test_on_a_jetson_without_tensorrt_or_an_engine_doctor_names_both_fixes(tmp_path, monkeypatch):
    """This machine's real modules, judged as a Jetson's (its board files under a root folder): TensorRT is
    needed there and absent here, and no engine is built in an empty cache."""
    from test_board_defaults import ORIN_NANO, board_files

    from hagrid_edge.commands.doctor import diagnose

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on this machine, whatever else is installed
    checks = {c.item: c for c in diagnose(detect_board(board_files(tmp_path / "root", ORIN_NANO), machine="aarch64"))}
    assert checks["board"].line() == "ok      board: NVIDIA Jetson Orin Nano Developer Kit (aarch64): a Jetson"
    assert checks["tensorrt"].blocks and checks["tensorrt"].line() == (
        "problem tensorrt: not installed; fix: sudo apt-get install -y python3-libnvinfer  (in a venv made with "
        "--system-site-packages)")
    assert checks["default"].blocks and checks["default"].line().endswith(", not built yet; fix: hagrid-edge build")
    assert not checks["onnxruntime"].fix and not checks["numpy"].fix  # installed and fine here too
