"""One format table: running (``open_backend``), benchmarking and calibrating agree on every suffix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hagrid_edge.benchmarks import formats as bench_formats
from hagrid_edge.deploy.common.backend import BACKENDS, open_backend
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.formats import BY_SUFFIX, CHECKPOINT_SUFFIXES, FORMATS, artifact_format
from hagrid_edge.spec import resolve_spec


def test_every_part_reads_the_one_table() -> None:
    from hagrid_edge.quantize.orchestrator import CHECKPOINTS

    assert set(BACKENDS) == set(bench_formats.FORMATS) == set(BY_SUFFIX)
    for suffix, fmt in BY_SUFFIX.items():
        assert ":".join(BACKENDS[suffix][:2]) == fmt.backend and BACKENDS[suffix][2] == fmt.extra
        assert (bench_formats.FORMATS[suffix].name, bench_formats.FORMATS[suffix].runtime) == (fmt.name, fmt.runtime)
    assert CHECKPOINTS == CHECKPOINT_SUFFIXES == (".pt", ".pth")
    assert [f.name for f in FORMATS] == ["ONNX", "TFLite", "TensorRT engine", "PyTorch checkpoint"]
    assert artifact_format("ENGINE.PLAN") is BY_SUFFIX[".plan"] and artifact_format("notes.txt") is None


def test_a_plan_file_is_an_engine_everywhere(hand_detector: Path, tmp_path: Path) -> None:
    """A TensorRT ``.plan`` used to pass the bench and fail ``run``/``eval`` as an unknown format."""
    plan = tmp_path / "detector.plan"
    plan.write_bytes(b"not an engine")
    assert bench_formats.format_of(plan).name == "TensorRT engine"
    with pytest.raises(HagridEdgeError) as err:  # no TensorRT here: the engine adapter says so
        open_backend(plan, spec=resolve_spec(hand_detector))
    assert "unsupported model format" not in str(err.value)
    with pytest.raises(HagridEdgeError, match="unsupported model format '.caffemodel'"):
        open_backend(tmp_path / "m.caffemodel", spec=resolve_spec(hand_detector))


def test_calibrate_takes_the_checkpoints_of_the_table(tmp_path: Path) -> None:
    from hagrid_edge.quantize.orchestrator import prepare_fp32

    with pytest.raises(HagridEdgeError, match=r"no such checkpoint"):
        prepare_fp32(tmp_path / "best.pth", None)
    with pytest.raises(HagridEdgeError, match=r"an FP32 \.onnx or a training checkpoint \(\.pt, \.pth\)"):
        prepare_fp32(tmp_path / "engine.plan", None)
