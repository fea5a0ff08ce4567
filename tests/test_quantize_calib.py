"""Calibration inputs from the HaGRID subsample: same preprocessing as inference, bad images counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hagrid_edge.data.annotations import load_split
from hagrid_edge.errors import DataError
from hagrid_edge.images import read_rgb
from hagrid_edge.processing import preprocess
from hagrid_edge.quantize.calib_data import calibration_batches
from hagrid_edge.spec import resolve_spec


def make_root(mini_root: Path, dst: Path, per_gesture: int = 3, gestures: tuple[str, ...] = ("call", "fist"),
              layout: str = "annotations") -> Path:
    """A small copy of hagrid512-mini's subsample (``annotations/subsample`` or official ``ann_subsample``)."""
    for g in gestures:
        entries = json.loads((mini_root / "annotations" / "subsample" / f"{g}.json").read_text())
        keep = dict(list(entries.items())[:per_gesture])
        ann = dst / ("annotations/subsample" if layout == "annotations" else "ann_subsample")
        ann.mkdir(parents=True, exist_ok=True)
        (ann / f"{g}.json").write_text(json.dumps(keep))
        img_dir = dst / ("hagrid_dataset_512" if layout == "annotations" else "subsample") / g
        img_dir.mkdir(parents=True, exist_ok=True)
        for image_id in keep:
            shutil.copy(mini_root / "hagrid_dataset_512" / g / f"{image_id}.jpg", img_dir)
    return dst


def test_inputs_are_the_inference_preprocessing(mini_root, hand_detector):
    spec = resolve_spec(hand_detector)
    inputs, stats = calibration_batches(mini_root, spec, limit=20)
    assert (stats.used, stats.skipped, stats.inputs) == (20, 0, 20)
    assert all(x.shape == (1, 3, 240, 320) and x.dtype == np.float32 for x in inputs)
    first = load_split(mini_root, "subsample")[0]
    np.testing.assert_array_equal(inputs[0], preprocess(read_rgb(first.image_path), spec)[0])


def test_limit_covers_every_gesture(mini_root, hand_detector):
    from hagrid_edge.quantize.calib_data import subsample

    samples, bad = subsample(mini_root, limit=18)
    assert len({s.gesture for s in samples}) == 18 and bad == 0


def test_crop_classifier_gets_one_input_per_hand(mini_root, crop_classifier, tmp_path):
    root = make_root(mini_root, tmp_path / "d", layout="official")
    inputs, stats = calibration_batches(root, resolve_spec(crop_classifier))
    hands = sum(len(s.labels) for s in load_split(root, "subsample"))
    assert stats.used == 6 and len(inputs) == hands and inputs[0].shape == (1, 3, 128, 128)


def test_corrupt_image_is_skipped_and_counted(mini_root, hand_detector, tmp_path):
    root = make_root(mini_root, tmp_path / "d")
    victim = next((root / "hagrid_dataset_512" / "call").iterdir())
    victim.write_bytes(b"\xff\xd8 not a jpeg")
    inputs, stats = calibration_batches(root, resolve_spec(hand_detector))
    assert (stats.used, stats.skipped, len(inputs)) == (5, 1, 5)
    assert stats.skipped_files == [str(victim)]


def test_all_images_corrupt_is_an_error(mini_root, hand_detector, tmp_path):
    root = make_root(mini_root, tmp_path / "d")
    for p in (root / "hagrid_dataset_512").rglob("*.jpg"):
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 6 subsample images could be read"):
        calibration_batches(root, resolve_spec(hand_detector))


def test_missing_and_empty_subsample(mini_root, hand_detector, tmp_path):
    spec = resolve_spec(hand_detector)
    no_sub = tmp_path / "nosub"
    (no_sub / "annotations" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="no HaGRID subsample"):
        calibration_batches(no_sub, spec)
    empty = tmp_path / "empty"
    (empty / "annotations" / "subsample").mkdir(parents=True)
    (empty / "annotations" / "subsample" / "call.json").write_text("{}")
    with pytest.raises(DataError, match="no usable entries"):
        calibration_batches(empty, spec)


def test_a_failed_target_leaves_nothing_under_its_artifacts_name(tmp_path: Path) -> None:
    """A rerun whose target fails must not show the earlier run's artifact (or its own half-made one)
    as this run's result."""
    from hagrid_edge.quantize.orchestrator import attempt
    from hagrid_edge.quantize.report import TargetResult

    path = tmp_path / "det_int8.tflite"
    path.write_bytes(b"earlier run")
    Path(f"{path}.json").write_text("{}", encoding="utf-8")

    def converter_crash() -> None:
        raise RuntimeError("onnx2tf: unsupported op\nmore")

    result = attempt(TargetResult("tflite-int8", path), converter_crash)
    assert result.error == ("RuntimeError: onnx2tf: unsupported op (an earlier run's det_int8.tflite moved to "
                            "det_int8_previous.tflite)")
    assert result.size == 0 and not path.exists() and not Path(f"{path}.json").exists()
    assert (tmp_path / "det_int8_previous.tflite").read_bytes() == b"earlier run"

    def half_written() -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    result = attempt(TargetResult("tflite-int8", path), half_written)
    assert result.error.endswith("(this run's det_int8.tflite moved to det_int8_incomplete.tflite)")
    assert not path.exists() and result.size == 0
