"""Each board's default pipeline, the shipped models found by name, and the wheel that carries them.

Boards are told apart by the files their kernels and OS write, as read from real boards (the
device-tree model and compatible strings, /proc/cpuinfo, /etc/nv_tegra_release), laid out under a
folder given to ``detect_board`` as its root. The wheel test builds the real wheel, installs it into a
fresh venv and runs ``hagrid-edge run`` without ``--engine`` from a folder that has no assets/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from hagrid_edge.board import default_engine, default_pipeline, detect_board
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import DEFAULT_DATA, DEFAULT_MODELS, REPO_ROOT, engine_cache, resolve_model

PHOTOS = DEFAULT_DATA / "hagrid_dataset_512"
ORIN_NANO = {"proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\0",
             "proc/device-tree/compatible": "nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0"}
L4T_36_4 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
PI4_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n\n"
               "Hardware\t: BCM2835\nRevision\t: c03115\nSerial\t\t: 10000000a1b2c3d4\n"
               "Model\t\t: Raspberry Pi 4 Model B Rev 1.5\n")


def board_files(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("files, machine, kind, generation, model", [
    ({"proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\0"}, "aarch64", "pi", 5, "gesture_detector_int8.tflite"),
    ({"proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\0"}, "aarch64", "pi", 4, "gesture_detector_fp16.tflite"),
    ({"proc/device-tree/model": "Raspberry Pi Compute Module 5 Rev 1.0\0"}, "aarch64", "pi", 5,
     "gesture_detector_int8.tflite"),
    ({"proc/device-tree/model": "Raspberry Pi 400 Rev 1.1\0"}, "aarch64", "pi", 4, "gesture_detector_fp16.tflite"),
    ({"proc/cpuinfo": PI4_CPUINFO}, "aarch64", "pi", 4, "gesture_detector_fp16.tflite"),  # no device tree
    ({}, "aarch64", "other", None, "gesture_detector_int8.tflite"),  # an Arm board we do not know: the Pi 5's
    ({}, "x86_64", "x86_64", None, "gesture_detector.onnx"),
])
def test_board_and_its_shipped_default(tmp_path, files, machine, kind, generation, model):
    board = detect_board(board_files(tmp_path, files), machine=machine)
    assert (board.kind, board.pi_generation) == (kind, generation)
    chosen = default_pipeline(board)
    assert chosen.path == DEFAULT_MODELS / model and chosen.path.is_file()
    path, line = default_engine(board)
    assert path == str(DEFAULT_MODELS / model)
    assert line.startswith(f"no --engine: {board.describe()}, so {model} with ") and "\n" not in line


@pytest.mark.parametrize("files", [
    ORIN_NANO,
    {"etc/nv_tegra_release": L4T_36_4},  # a container: /proc/device-tree may be hidden, the L4T file is there
])
def test_jetson_runs_the_engine_hagrid_edge_build_caches(tmp_path, monkeypatch, files):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    board = detect_board(board_files(tmp_path / "root", files), machine="aarch64")
    assert board.kind == "jetson"
    chosen = default_pipeline(board)
    assert chosen.path == engine_cache() / "gesture_detector_fp16.trt" and chosen.runtime == "TensorRT"
    assert str(chosen.path).startswith(str(tmp_path / "cache" / "hagrid-edge" / "engines"))
    with pytest.raises(HagridEdgeError, match=r"not built yet .*; build it once with: hagrid-edge build$"):
        default_engine(board)


def test_a_bare_name_is_the_shipped_model_and_a_local_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no assets/ here
    shipped = str(DEFAULT_MODELS / "gesture_detector.onnx")
    assert resolve_model("gesture_detector.onnx") == shipped
    assert resolve_model("assets/models/gesture_detector.onnx") == shipped  # as the docs write it
    assert resolve_model("nothere.onnx") == "nothere.onnx"  # opening it then names it
    assert resolve_model("other/gesture_detector.onnx") == "other/gesture_detector.onnx"  # a path, not a name
    shutil.copy(DEFAULT_MODELS / "hand_detector.onnx", tmp_path / "gesture_detector.onnx")
    assert resolve_model("gesture_detector.onnx") == "gesture_detector.onnx"  # the local file wins


def test_eval_finds_a_shipped_model_by_name(tmp_path):
    cmd = [sys.executable, "-m", "hagrid_edge.cli", "eval", "--data", str(DEFAULT_DATA), "--split", "val", "--json"]
    by_name = subprocess.run([*cmd, "--model", "gesture_detector_int8.tflite"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
    by_path = subprocess.run([*cmd, "--model", str(DEFAULT_MODELS / "gesture_detector_int8.tflite")],
                             capture_output=True, text=True, timeout=300)
    assert by_name.returncode == 0, by_name.stderr
    named, pathed = json.loads(by_name.stdout), json.loads(by_path.stdout)
    assert {**named, "seconds": 0} == {**pathed, "seconds": 0} and named["images"] == 18


# ---- the wheel -------------------------------------------------------------------------------------
def _events(path: Path) -> list[dict]:
    """The events without their wall-clock time."""
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, a fresh venv with it installed): built from a copy of the project's files (setup.cfg's
    package_dir), so concurrent builds never share a build/ folder. The venv has no pip packages of its own
    but the wheel: its dependencies are this test environment's, reached through a .pth line."""
    from hagrid_edge.deploy.rpi.emulate import package_dirs

    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, src / name)
    folders = {folder.resolve().relative_to(REPO_ROOT) for folder in package_dirs().values()}
    for rel in sorted(folders):
        if not any(parent in folders for parent in rel.parents):
            shutil.copytree(REPO_ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp / "dist")],
                   check=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("hagrid_edge-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=600)
    site = Path(subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "_hagrid_edge_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return wheel, venv


def test_wheel_carries_the_models_and_their_licences(wheel_venv):
    wheel, _ = wheel_venv
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"hagrid_edge/shipped_models/{p.name}" for p in DEFAULT_MODELS.iterdir() if p.is_file()}
    assert shipped <= names
    assert {"hagrid_edge/shipped_models/LICENSE", "hagrid_edge/shipped_models/hand_landmark_lite.LICENSE"} <= names
    assert not any("hagrid-sample" in n or n.startswith("assets/") for n in names)
    print(f"wheel: {wheel.name}, {wheel.stat().st_size / 1e6:.1f} MB")


def test_wheel_runs_the_default_without_engine_from_anywhere(wheel_venv, tmp_path):
    _, venv = wheel_venv
    here = tmp_path / "elsewhere"  # no assets/ here
    here.mkdir()
    exe = venv / "bin" / "hagrid-edge"
    where = subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                     "import hagrid_edge.paths as p; print(p.DEFAULT_MODELS)"], text=True, cwd=here)
    assert Path(where.strip()).is_relative_to(venv) and Path(where.strip()).name == "shipped_models"
    wheel_run = subprocess.run([str(exe), "run", "--source", str(PHOTOS), "--headless", "--events", "ev.jsonl"],
                               capture_output=True, text=True, cwd=here, timeout=600)
    assert wheel_run.returncode == 0, wheel_run.stderr
    assert "no --engine: x86_64, so gesture_detector.onnx with ONNX Runtime" in wheel_run.stderr
    repo_run = subprocess.run([sys.executable, "-m", "hagrid_edge.cli", "run", "--engine",
                               str(REPO_ROOT / "assets/models/gesture_detector.onnx"), "--source", str(PHOTOS),
                               "--headless", "--events", str(tmp_path / "repo.jsonl")],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert repo_run.returncode == 0, repo_run.stderr
    events = _events(here / "ev.jsonl")
    assert events == _events(tmp_path / "repo.jsonl")
    starts = {e["gesture"] for e in events if e["event"] == "start"}
    assert len(starts) >= 10 and "no_gesture" not in starts  # the 18 photos show many of HaGRID's gestures

    doctor = subprocess.run([str(exe), "doctor"], capture_output=True, text=True, cwd=here, timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    default = next(li for li in doctor.stdout.splitlines() if li.split()[1] == "default:")
    assert default.startswith("ok ") and f"{venv}" in default and "shipped_models/gesture_detector.onnx" in default



# ---- the emulated Pi: a Pi's own userland under qemu, its device tree naming the Pi 5 / Pi 4 -------
@pytest.mark.parametrize("cpu, model", [("pi5", "gesture_detector_int8.tflite"), ("pi4", "gesture_detector_fp16.tflite")])
def test_emulated_pi_runs_its_default_and_doctor_says_so(tmp_path, cpu, model):
    from test_emulate import built_userland

    built_userland(cpu)
    emulate = [sys.executable, "-m", "hagrid_edge.deploy.rpi.emulate", "--cpu", cpu, "--"]
    events = tmp_path / "pi.jsonl"
    pi = subprocess.run([*emulate, "hagrid-edge", "run", "--source", str(PHOTOS), "--headless", "--events", str(events)],
                        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert pi.returncode == 0, pi.stderr
    assert f", so {model} with LiteRT (" in pi.stderr.splitlines()[0]
    host = subprocess.run([sys.executable, "-m", "hagrid_edge.cli", "run", "--engine", model, "--source", str(PHOTOS),
                           "--headless", "--events", str(tmp_path / "x86.jsonl")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert host.returncode == 0, host.stderr
    assert _events(events) == _events(tmp_path / "x86.jsonl") and len(_events(events)) > 20

    doctor = subprocess.run([*emulate, "hagrid-edge", "doctor"], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=600)
    lines = {li.split()[1].rstrip(":"): li for li in doctor.stdout.splitlines()}
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr  # no picamera2 in Debian: the camera alone
    assert lines["board"].startswith(f"ok      board: Raspberry Pi {cpu[-1]} Model B")
    assert lines["default"].startswith("ok ") and f"shipped_models/{model} with LiteRT" in lines["default"]
    assert lines["picamera2"].startswith("problem picamera2: import failed: ModuleNotFoundError")
    assert lines["picamera2"].endswith("; fix: sudo apt-get install -y python3-picamera2")
