"""TensorRT calibration cache: TensorRT's text format, from the same ranges as the QDQ model."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import TensorData, TensorsData

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.quantize.trt_cache import (
    CalibrationCache,
    format_cache,
    parse_cache,
    read_cache,
    retag,
    scales_from_ranges,
    version_tag,
    write_cache,
)


def ranges(**amax: tuple[float, float]) -> TensorsData:
    return TensorsData(CalibrationMethod.Percentile, {
        k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in amax.items()})


def test_version_tags():
    assert version_tag("8.2.1") == 8201
    assert version_tag("8.5.2.2") == 8502
    assert version_tag("8.6.1") == 8601
    assert version_tag("10.3.0") == 100300
    with pytest.raises(HagridEdgeError, match="MAJOR.MINOR"):
        version_tag("ten")


def test_format_is_tensorrt_text(tmp_path):
    cache = write_cache(tmp_path / "m.calib", ranges(input=(-1.0, 0.9921875), **{"/conv/Conv_output_0": (0.0, 12.7)}),
                        "percentile", "8.5.2")
    text = (tmp_path / "m.calib").read_text()
    lines = text.splitlines()
    assert lines[0] == "TRT-8502-EntropyCalibration2"
    # scale = amax / 127 as big-endian float32 bits
    assert lines[2] == "input: " + struct.pack(">f", np.float32(1.0 / 127)).hex()
    assert lines[1] == "/conv/Conv_output_0: " + struct.pack(">f", np.float32(12.7 / 127)).hex()
    assert lines[1].endswith("3dcccccd")  # 0.1
    assert cache.scales["input"] == pytest.approx(1 / 127)


def test_round_trip_and_retag(tmp_path):
    cache = CalibrationCache(8502, "MinMaxCalibration", {"a": 0.5, "b:0": 1e-3, "x/y z": 3.25})
    back = parse_cache(format_cache(cache))
    assert back.version_tag == 8502 and back.algorithm == "MinMaxCalibration"
    assert back.scales == pytest.approx(cache.scales, rel=1e-7)
    moved = retag(back, "8.6.2.3")
    assert format_cache(moved).splitlines()[0] == "TRT-8602-MinMaxCalibration"
    assert moved.scales == back.scales


def test_zero_tensor_gets_a_positive_scale():
    assert scales_from_ranges(ranges(z=(0.0, 0.0)))["z"] > 0


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("TRT-abc-EntropyCalibration2\n", "header"),
    ("TRT-8502-Kullback\n", "header"),
    ("TRT-8502-EntropyCalibration2\ninput 3c010a14\n", "line 2"),
    ("TRT-8502-EntropyCalibration2\ninput: 3c01\n", "line 2"),
])
def test_malformed_cache_names_the_line(text, match, tmp_path):
    path = tmp_path / "bad.calib"
    path.write_text(text)
    with pytest.raises(HagridEdgeError, match=match):
        read_cache(path)


def test_method_picks_the_calibrator_algorithm(tmp_path):
    assert write_cache(tmp_path / "a", ranges(t=(-1, 1)), "minmax").algorithm == "MinMaxCalibration"
    assert write_cache(tmp_path / "b", ranges(t=(-1, 1)), "entropy").algorithm == "EntropyCalibration2"
