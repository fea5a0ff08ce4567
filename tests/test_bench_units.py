"""Bench building blocks on real files: format/precision detection, timing summary, isolation, Pareto."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hagrid_edge.benchmarks import formats, latency, memory, report, suite
from hagrid_edge.errors import HagridEdgeError


def test_precision_of_real_artifacts(hand_detector, mediapipe_dir, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    assert formats.precision_of(hand_detector, {}) == formats.FP32
    # MediaPipe ships its palm detector with float16 weights dequantized in the graph.
    assert formats.precision_of(mediapipe_dir / "palm_detection_lite.tflite", {}) == formats.FP16
    dyn, source = tmp_path / "dyn.onnx", tmp_path / "crops_classifier.onnx"
    # a copy: ONNX Runtime writes a shape-inferred model beside its input, and shared/ is read-only
    source.write_bytes((hand_detector.parent / "crops_classifier.onnx").read_bytes())
    quantize_dynamic(str(source), str(dyn), weight_type=QuantType.QInt8)
    assert formats.precision_of(dyn, {}) == formats.INT8_DYNAMIC
    # Formats without a file inspector report what the making tool declared.
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    assert formats.precision_of(engine, {"engine": {"precision": "int8"}}) == formats.INT8
    assert formats.precision_of(engine, {}) == formats.UNKNOWN


def test_unreadable_and_unknown_files_are_named(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("not a model")
    with pytest.raises(HagridEdgeError, match="notes.onnx: not a readable ONNX model"):
        formats.precision_of(bad, {})
    with pytest.raises(HagridEdgeError, match="notes.txt: not a model artifact"):
        formats.format_of(tmp_path / "notes.txt")


def test_raw_spec_describes_the_palm_detector_input(mediapipe_dir):
    spec = suite.raw_spec(mediapipe_dir / "palm_detection_lite.tflite")
    assert (spec.layout, spec.input_size, spec.input_dtype, spec.input_name) == ("NHWC", (192, 192), "float32", "input_1")


def test_targets_pair_syntax_and_unique_ids(tmp_path):
    a, b = tmp_path / "fp32", tmp_path / "int8"
    targets = suite.make_targets([f"{a}/det.onnx", f"{b}/det.onnx+{b}/cls.onnx"], [str(tmp_path / "palm.tflite")])
    assert [t.id for t in targets] == ["fp32/det.onnx", "int8/det.onnx+int8/cls.onnx", f"{tmp_path.name}/palm.tflite"]
    assert targets[1].classifier == f"{b}/cls.onnx" and targets[2].latency_only


def test_summarise_percentiles():
    s = latency.summarise([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (s.runs, s.median_ms, s.p90_ms, s.p99_ms, s.min_ms) == (100, 50.5, 90.1, 99.01, 1.0)
    assert s.fps == pytest.approx(1000 / 50.5, abs=0.01)
    assert s.std_ms == pytest.approx(float(np.std(np.arange(1, 101), ddof=1)), abs=1e-3)


def test_time_calls_runs_warmup_then_at_least_runs():
    seen: list[int] = []
    stats = latency.time_calls(seen.append, latency.LatencyConfig(warmup=3, runs=5))
    assert seen == list(range(8)) and stats.runs == 5


def test_pareto_front():
    pts = [(10.0, 50.0), (5.0, 40.0), (20.0, 49.0), (7.0, 45.0), (30.0, 60.0)]
    assert report.pareto_front(pts) == [1, 3, 0, 4]


def test_crashing_runtime_becomes_an_error_not_a_crash():
    status, reason = memory.run_isolated(os.abort, ())
    assert status == "error" and "killed by signal" in reason
    assert memory.run_isolated(os.getpid, ()) [0] == "ok"


def test_load_report_rejects_other_json(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"mAP50": 1}))
    with pytest.raises(HagridEdgeError, match="other.json: not a hagrid-edge bench report"):
        report.load_report(other)
    with pytest.raises(HagridEdgeError, match="missing.json: report: cannot read it"):
        report.load_report(Path(tmp_path / "missing.json"))


def test_machine_description():
    from hagrid_edge.benchmarks import machine

    m = machine.describe("bench-host")
    assert m["label"] == "bench-host" and m["cores"] >= m["usable_cores"] >= 1 and m["cpu"]
    assert "onnxruntime" in m["libraries"] and "numpy" in m["libraries"]
    # Jetson facts (L4T release, JetPack, power mode) appear only on a Jetson.
    assert ("jetson" in m) == machine.TEGRA_RELEASE.exists()
