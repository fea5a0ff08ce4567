"""The command surface: every subcommand's help works without heavy or hardware-only imports."""

from __future__ import annotations

import subprocess
import sys

from hagrid_edge.cli import COMMANDS, build_parser

HEAVY = ("torch", "onnxruntime", "onnx", "tensorrt", "pycuda", "picamera2", "ai_edge_litert", "tflite_runtime", "cv2")


def test_building_the_parser_imports_no_runtime() -> None:
    code = ("import sys; from hagrid_edge.cli import build_parser; build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert len(names) == len(COMMANDS)
    for name in names:
        p = subprocess.run([sys.executable, "-m", "hagrid_edge.cli", name, "--help"], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0 and "usage: hagrid-edge" in p.stdout, p.stderr


def test_unknown_option_exits_2_with_usage() -> None:
    p = subprocess.run([sys.executable, "-m", "hagrid_edge.cli", "eval", "--model", "m.onnx", "--data", "d", "--bogus"], capture_output=True, text=True)
    assert p.returncode == 2 and "unrecognized arguments: --bogus" in p.stderr and "Traceback" not in p.stderr
