"""What the figures were measured on: CPU, cores, library versions, and board facts on a Jetson or Pi.

Latency means little without the machine: a Jetson's power mode or a Pi's model changes it several
fold, so the report records them next to the numbers.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

# Distributions whose versions a report records, where installed.
LIBRARIES = ("hagrid-edge", "numpy", "opencv-python-headless", "onnxruntime", "onnx", "ai-edge-litert",
             "tflite-runtime", "torch", "tensorrt", "cuda-python", "pycocotools")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def _command(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def jetson_facts() -> dict[str, str]:
    """L4T release line, JetPack package version and nvpmodel power mode, on a Jetson only."""
    release = _read(TEGRA_RELEASE)
    if release is None:
        return {}
    facts = {"l4t": release.splitlines()[0].lstrip("# ").strip()}
    jetpack = _command("dpkg-query", "--showformat=${Version}", "--show", "nvidia-jetpack")
    if jetpack:
        facts["jetpack"] = jetpack
    mode = _command("nvpmodel", "-q")
    if mode:
        facts["power_mode"] = " ".join(mode.split())
    return facts


def describe(label: str | None = None) -> dict[str, object]:
    """The machine as a report records it; ``label`` names it in merged tables (default: host name)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    facts: dict[str, object] = {
        "label": label or socket.gethostname(),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
    board = _read(DEVICE_TREE_MODEL)
    if board:
        facts["board"] = board
    jetson = jetson_facts()
    if jetson:
        facts["jetson"] = jetson
    return facts
