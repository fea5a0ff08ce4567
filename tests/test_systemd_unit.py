"""The systemd unit starts: its ExecStart, with /opt/hagrid-edge read as this clone and the camera
replaced by the shipped sample photos, runs and reports gestures."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from hagrid_edge.paths import REPO_ROOT

UNIT = REPO_ROOT / "deploy" / "systemd" / "hagrid-edge.service"
INSTALL_DIR = "/opt/hagrid-edge"


def exec_start() -> list[str]:
    text = UNIT.read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_units_command_runs_on_the_sample(tmp_path: Path) -> None:
    argv = [a.replace(INSTALL_DIR, str(REPO_ROOT)) for a in exec_start()]
    assert Path(argv[0]).name == "hagrid-edge" and argv[1] == "run"
    paths = [Path(a) for a in argv if a.startswith(str(REPO_ROOT))]  # the venv's entry point, any model given
    assert paths and all(p.exists() for p in paths), [str(p) for p in paths if not p.exists()]
    assert "--engine" not in argv  # each board runs its own main pipeline (here x86's ONNX)
    source = argv.index("--source") + 1
    assert argv[source] == "csi://0"
    argv[source] = str(REPO_ROOT / "assets" / "hagrid-sample" / "hagrid_dataset_512")
    proc = subprocess.run([sys.executable, "-m", "hagrid_edge.cli", *argv[1:]], capture_output=True, text=True,
                          timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(events) >= 18 and {e["event"] for e in events} >= {"start"}
