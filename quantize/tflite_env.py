"""The isolated environment that runs the ONNX -> TFLite converter (onnx2tf).

onnx2tf 1.29 pins TensorFlow 2.19, numpy 1.26, onnx 1.19 and onnxruntime 1.23, which conflict with
the main environment, so it lives in a virtual environment of its own, created on first use under
the user cache from PyPI with the exact pins below and run only as a subprocess. Nothing of it is
imported into this process.

Create it ahead of time (about 2.6 GB, a few minutes) with ``python -m hagrid_edge.quantize.tflite_env``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import user_cache

ONNX2TF_VERSION = "1.29.24"
TENSORFLOW_VERSION = "2.19.0"
# onnx2tf's own exact requirements (its wheel metadata), so the environment is reproducible.
PINS = (
    f"onnx2tf=={ONNX2TF_VERSION}",
    f"tensorflow=={TENSORFLOW_VERSION}",
    "tf-keras==2.19.0",
    "numpy==1.26.4",
    "onnx==1.19.1",
    "onnxruntime==1.23.0",
    "onnxsim==0.4.36",
    "onnxoptimizer==0.4.2",
    "onnx-graphsurgeon==0.5.8",
    "simple-onnx-processing-tools==1.1.32",
    "ai-edge-litert==2.1.0",
    "opencv-python==4.11.0.86",
    "requests==2.32.5",
    "psutil==5.9.5",
    "protobuf==4.25.5",
    "h5py==3.11.0",
    "ml-dtypes==0.5.1",
    "flatbuffers==25.12.19",
)
ENV_VAR = "HAGRID_EDGE_ONNX2TF_ENV"  # overrides where the environment lives
MARKER = "hagrid-edge-pins.txt"  # written last: an environment without it is incomplete
INSTALL_TIMEOUT_S = 3600


def env_dir() -> Path:
    """Where the converter environment lives: ``$HAGRID_EDGE_ONNX2TF_ENV``, else the user cache."""
    custom = os.environ.get(ENV_VAR)
    if custom:
        return Path(custom).expanduser()
    return user_cache() / f"onnx2tf-{ONNX2TF_VERSION}"


def _python(root: Path) -> Path:
    return root / "bin" / "python"


def _ready(root: Path) -> bool:
    marker = root / MARKER
    return _python(root).is_file() and marker.is_file() and marker.read_text().split() == list(PINS)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def create_env(root: Path) -> Path:
    """Build the environment in place; the marker is written only once every pin installed.

    Not built elsewhere and moved: onnx2tf runs the ``onnxsim`` console script, whose shebang holds
    the environment's absolute path.
    """
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    steps = ([sys.executable, "-m", "venv", str(root)],
             [*nice, str(_python(root)), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PINS])
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            shutil.rmtree(root, ignore_errors=True)
            raise HagridEdgeError(f"{root}: creating the TFLite converter environment timed out") from None
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)  # a partial install is never used (no marker)
            raise HagridEdgeError(f"{root}: cannot create the TFLite converter environment "
                                  f"({_last_line(done.stderr or done.stdout)})")
    (root / MARKER).write_text("\n".join(PINS) + "\n")
    return _python(root)


def converter_python(install: bool = True) -> Path:
    """The converter environment's Python; created first if missing and ``install`` allows it.

    A lock file beside the environment keeps concurrent exports from building it at the same time.
    """
    root = env_dir()
    if _ready(root):
        return _python(root)
    if not install:
        raise HagridEdgeError(f"{root}: no TFLite converter environment (onnx2tf {ONNX2TF_VERSION}); "
                              "create it with `python -m hagrid_edge.quantize.tflite_env` "
                              f"or point {ENV_VAR} at one")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HagridEdgeError(f"{root}: cannot create the TFLite converter environment here ({e.strerror})") from None
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(root):  # built by another process while this one waited
            return _python(root)
        return create_env(root)


def main() -> int:
    try:
        print(converter_python(install=True))
    except HagridEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
