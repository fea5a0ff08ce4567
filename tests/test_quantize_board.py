"""The guard's board side: the Pi cost model, ranking by gain per instruction, honest tune photos for a
model trained here, and calibrate's exit code when no candidate holds the limits."""

from __future__ import annotations

import json
from pathlib import Path

from test_quantize_cli import run_cli

from hagrid_edge.data.annotations import load_split
from hagrid_edge.quantize import board_cost
from hagrid_edge.quantize.accuracy import Score
from hagrid_edge.quantize.choices import DEFAULT_MAX_DROP50
from hagrid_edge.quantize.orchestrator import Calibration, Options
from hagrid_edge.quantize.photo_sets import photo_sets, trained_on
from hagrid_edge.quantize.sensitivity import Limits, rank
from hagrid_edge.spec import resolve_spec

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "assets" / "models"
# Infer instructions per frame counted on the emulated CPUs (benchmarks/bench_calibration_cost.py --extra,
# median of 2 val frames after a warm-up frame); deterministic to a few instructions per million.
COUNTED = {("hand_detector_int8.tflite", "pi5"): 44_321_809, ("hand_detector_int8.tflite", "pi4"): 54_834_947}


def test_cost_model_is_near_the_emulated_count_of_a_shipped_artifact():
    """The file the coefficients fit worst (13.8 % on a Pi 5 when left out of the fit)."""
    for (name, cpu), counted in COUNTED.items():
        predicted = board_cost.instructions(MODELS / name, cpu)
        assert predicted is not None and abs(predicted - counted) / counted < 0.15, (name, cpu, predicted, counted)
    f = board_cost.features(MODELS / "hand_detector_int8.tflite")
    assert f["mac_q"] > 0 and f["mac_f"] > 0 and f["convert"] > 0  # its 13 float units meet int8 ones
    # a Pi 4 (no dot product) does an int8 MAC for about the instructions of a float one, a Pi 5 for half
    c5, c4 = board_cost.COEFFICIENTS["pi5"], board_cost.COEFFICIENTS["pi4"]
    assert c5["mac_q"] / c5["mac_f"] < 0.6 < 0.9 < c4["mac_q"] / c4["mac_f"]


def test_guard_ranks_by_gain_per_instruction():
    gains = [("big", 0.40), ("small", 0.30), ("useless", -0.05), ("free", 0.01)]
    costs = {"big": 4e6, "small": 2e5, "useless": 1e4, "free": 0.0}
    assert rank(gains, costs) == ["small", "free", "big", "useless"]
    assert rank(gains, None) == ["big", "small", "useless", "free"]  # without costs: the given order


def _gestures(map50_95: float, map50: float, agreement: float = 100.0) -> Score:
    return Score("mAP50_95", map50_95, {"mAP50": map50}, "gestures", 82, 0.0, "tune", {"mAP50_95": agreement})


def test_guard_holds_map50_too():
    """The project's INT8 promise is 0.5 / 1.0 (mAP50-95 / mAP50): a candidate within 0.5 mAP50-95 and the
    agreement limit that loses more than 1.0 mAP50 does not hold (the one-stage detector's all-int8 form
    with p99.9999 ranges on tune: -0.44 / -1.33, agreement 99.12)."""
    fp32 = _gestures(57.51, 80.34)
    limits = Calibration(Options(model=Path("m.onnx"), data=Path("d"), out=Path("o"))).limits
    assert limits.max_drop50 == DEFAULT_MAX_DROP50 == 1.0
    assert not limits.holds(fp32, _gestures(57.07, 79.01, 99.12))
    assert limits.holds(fp32, _gestures(57.58, 80.22, 99.52))
    assert Limits(0.5, 99.0).holds(fp32, _gestures(57.07, 79.01, 99.12))  # without it, as before
    # a classifier's second figure is accuracy, not mAP50: only its headline limit applies
    f1 = Score("f1", 80.0, {"accuracy": 90.0}, "classify", 10, 0.0, "tune")
    assert limits.holds(f1, Score("f1", 79.8, {"accuracy": 85.0}, "classify", 10, 0.0, "tune"))


def test_tune_photos_of_a_model_trained_here_are_val_users(mini_root):
    one_stage = resolve_spec(MODELS / "gesture_detector.onnx")
    assert trained_on(one_stage.provenance, mini_root) == "train"
    assert trained_on(resolve_spec(MODELS / "hand_detector_cut.onnx").provenance, mini_root) is None
    tune, report = photo_sets(mini_root, trained=True)
    train = {s.image_id for s in load_split(mini_root, "train")}
    val = {s.image_id for s in load_split(mini_root, "val")}
    for photos in (tune, report):
        ids = {s.image_id for s in photos.samples}
        assert ids <= val and not ids & train and photos.labelled_samples() == photos.samples
        assert "trained on the train split" in photos.sources
    assert not {s.user_id for s in tune.samples} & {s.user_id for s in report.samples}
    assert len(tune.samples) + len(report.samples) == len(val)


def test_guard_that_cannot_hold_its_limits_exits_non_zero(hand_detector, mini_root, tmp_path, capsys):
    """A cost limit no INT8 form meets: the report and the artifact are written, the artifact under a name
    no pipeline loads and flagged in its spec, and calibrate exits 3 with one line naming it."""
    out = tmp_path / "out"
    rc, md, err = run_cli(["--subset", "--model", str(hand_detector), "--data", str(mini_root), "--out", str(out),
                           "--targets", "tflite-int8", "--limit", "8", "--eval-limit", "8",
                           "--max-board-ratio", "0.05"], capsys)
    assert rc == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "tflite-int8 (hand_detector_int8_over_limits.tflite)" in lines[0]
    (target,) = json.loads((out / "calibration_report.json").read_text())["stages"][0]["targets"]
    assert target["ok"] and target["within_limits_on_tune"] is False
    board = target["board_instructions"]["pi5"]
    assert board["x_fp32"] > 0.05 and board["instructions"] <= board["fp32"]
    written = out / "hand_detector_int8_over_limits.tflite"
    assert written.is_file() and not (out / "hand_detector_int8.tflite").exists()
    assert resolve_spec(written).provenance["guard"]["within_limits_on_tune"] is False
    assert "over --max-board-ratio 0.05" in md
