"""`hagrid-edge eval` on the real HaGRID models and images, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from hagrid_edge.bootstrap import groups_of
from hagrid_edge.cli import main
from hagrid_edge.data.annotations import Sample, load_split
from hagrid_edge.evaluate import (
    EVAL_SCORE_THRESHOLD,
    ResampledCocoMap,
    coco_detections,
    coco_ground_truth,
    f1_scores,
    run_detector,
    score_detections,
)
from hagrid_edge.images import read_rgb
from hagrid_edge.pipeline import load_pipeline
from hagrid_edge.processing import Detections, preprocess
from hagrid_edge.spec import resolve_spec


def _eval_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_hand_detector_scores_like_the_authors_report(capsys, mini_root, hand_detector) -> None:
    r = _eval_json(capsys, "--model", str(hand_detector), "--data", str(mini_root), "--split", "val",
                   "--task", "hands")
    assert r["images"] == 167 and set(r["per_class"]) == {"hand"}
    # The README's "Measured" table: the authors' hand detector as shipped, hands 57.6 / 82.9 on val
    # (one decimal; 0.1 leaves room for another CPU's ONNX Runtime kernels, not for a regression).
    assert r["mAP50_95"] == pytest.approx(57.6, abs=0.1) and r["mAP50"] == pytest.approx(82.9, abs=0.1)


def test_two_stage_pair_scores_gestures(capsys, mini_root, hand_detector, crop_classifier, pair_val_direct) -> None:
    """eval's figures for the pair are pycocotools' own on the raw annotation files (conftest's pair_val_direct)."""
    for task in ("gestures", "hands"):
        r = _eval_json(capsys, "--model", str(hand_detector), "--classifier", str(crop_classifier),
                       "--data", str(mini_root), "--split", "val", "--task", task)
        assert r["images"] == 167
        assert (r["mAP50_95"], r["mAP50"]) == pytest.approx((pair_val_direct[task]["mAP50_95"],
                                                             pair_val_direct[task]["mAP50"]), abs=0.01)
    assert "no_gesture" in r["per_class"] or task == "hands"


def test_crop_classifier_f1_on_annotated_hands(capsys, mini_root, crop_classifier) -> None:
    r = _eval_json(capsys, "--model", str(crop_classifier), "--data", str(mini_root), "--split", "val")
    assert r["task"] == "classify" and r["samples"] > 167
    # The accepted F1 of the authors' classifier on every annotated val hand, from an earlier bench run
    # (tests/data/bench_baseline.json), within the gate's accuracy margin.
    accepted = json.loads((Path(__file__).parent / "data" / "bench_baseline.json").read_text())
    assert r["f1"] == pytest.approx(accepted["rows"]["crops_classifier.onnx"]["classify"]["f1"], abs=1.0)


def _sample(name: str, gesture: str, boxes_xyxy: list[list[float]], labels: list[str]) -> Sample:
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) / 100.0  # 100x100 photos: normalised x, y, w, h
    return Sample(name, gesture, Path(f"{name}.jpg"), np.c_[b[:, :2], b[:, 2:] - b[:, :2]], labels)


def _dets(rows: list[tuple[list[float], float, str]]) -> Detections:
    return Detections(np.asarray([r[0] for r in rows], np.float32), np.asarray([r[1] for r in rows], np.float32),
                      np.zeros(len(rows), np.int64), [r[2] for r in rows])


def test_map_of_hand_written_detections() -> None:
    """COCO mAP worked out by hand on two photos (101 recall points, IoU thresholds 0.50:0.05:0.95).

    Photo a: a like hand [10, 10, 50, 50] and a palm hand [60, 60, 90, 90]; photo b: nothing.
    Detections: palm elsewhere (0.95, a false positive), like on the like hand (0.9, IoU 1), palm grown by
    6 px at the bottom (0.8, IoU 900 / 1080 = 0.833: a match at 7 of the 10 thresholds), fist on photo b
    (0.3, a class without ground truth), like elsewhere (0.2).
    gestures: like AP 1 at every threshold; palm 1/2 precision at full recall where it matches:
        mAP50-95 = (1 + 0.5 * 7/10) / 2 = 67.5, mAP50 = (1 + 0.5) / 2 = 75.
    hands: at the 7 thresholds where both match, FP, TP, TP: precision 2/3 at every recall: AP 0.6667;
        at the other 3 only the like box matches: precision 1/2 up to recall 1/2 (51 of 101 points): 0.2525;
        mAP50-95 = (7 * 0.6667 + 3 * 0.2525) / 10 = 54.24, mAP50 = 66.67.
    """
    samples = [_sample("a", "like", [[10, 10, 50, 50], [60, 60, 90, 90]], ["like", "palm"]),
               _sample("b", "fist", [], [])]
    dets = [_dets([([5, 60, 25, 80], 0.95, "palm"), ([10, 10, 50, 50], 0.9, "like"), ([60, 60, 90, 96], 0.8, "palm"),
                   ([70, 5, 95, 25], 0.2, "like")]),
            _dets([([0, 0, 5, 5], 0.3, "fist")])]
    sizes = [(100, 100), (100, 100)]
    gestures = score_detections(samples, sizes, dets, "gestures")
    assert (gestures["mAP50_95"], gestures["mAP50"]) == (67.5, 75.0)
    assert gestures["per_class"] == {"like": 100.0, "palm": 35.0}
    hands = score_detections(samples, sizes, dets, "hands")
    assert (hands["mAP50_95"], hands["mAP50"]) == (54.24, 66.67)


def test_nms_outputs_are_mapped_back_to_frame_pixels(mini_root, hand_detector) -> None:
    s = load_split(mini_root, "val")[3]
    frame = read_rgb(s.image_path)
    spec = resolve_spec(hand_detector)
    x, _ = preprocess(frame, spec)
    boxes, _, scores = ort.InferenceSession(str(hand_detector)).run(None, {"input": x})
    dets = load_pipeline(hand_detector, score_threshold=0.0)(frame)
    h, w = frame.shape[:2]
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_allclose(dets.boxes, np.clip(boxes[order] * [w, h, w, h], 0, [w, h, w, h]), rtol=1e-4)
    assert dets.labels == ["hand"] * len(scores)


def test_f1_is_macro_over_target_classes() -> None:
    r = f1_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert r["accuracy"] == 75.0
    assert r["per_class"] == {"a": pytest.approx(66.67), "b": 80.0}
    assert r["f1"] == pytest.approx(73.33, abs=0.01)  # mean of 66.67 and 80


def test_a_detector_compared_with_itself_differs_by_exactly_zero(capsys, mini_root, hand_detector) -> None:
    r = _eval_json(capsys, "--model", str(hand_detector), "--compare", str(hand_detector), "--data", str(mini_root),
                   "--task", "hands", "--limit", "30", "--bootstrap", "40")
    boot = r["bootstrap"]
    users = {s.user_id for s in load_split(mini_root, "val")[:30]}
    assert boot["unit"] == "user" and boot["groups"] == len(users) and boot["resamples"] == 40
    assert r["compare"]["mAP50_95"] == r["mAP50_95"]
    assert boot["difference"] == {"mAP50_95": [0.0, 0.0], "mAP50": [0.0, 0.0]}
    assert boot["intervals"][0] == boot["intervals"][1]


def test_compare_scores_each_pipeline_as_eval_does_alone(capsys, mini_root, hand_detector, crop_classifier) -> None:
    one_stage = "assets/models/gesture_detector.onnx"
    alone = _eval_json(capsys, "--model", one_stage, "--data", str(mini_root), "--limit", "30")
    pair = _eval_json(capsys, "--model", str(hand_detector), "--classifier", str(crop_classifier),
                      "--data", str(mini_root), "--limit", "30")
    r = _eval_json(capsys, "--model", str(hand_detector), "--classifier", str(crop_classifier), "--compare", one_stage,
                   "--data", str(mini_root), "--limit", "30", "--bootstrap", "60")
    assert (r["mAP50_95"], r["mAP50"]) == (pair["mAP50_95"], pair["mAP50"])
    assert (r["compare"]["mAP50_95"], r["compare"]["mAP50"]) == (alone["mAP50_95"], alone["mAP50"])
    boot = r["bootstrap"]
    for interval in boot["intervals"]:
        assert all(0 <= low <= high <= 100 for low, high in interval.values())
    for metric, (low, high) in boot["difference"].items():
        assert low < high  # two different pipelines do not tie on every draw of 30 photos
        assert 0 <= boot["first_better_share"][metric] <= 1
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("task", ["gestures", "hands"])
def test_a_resample_scores_as_the_drawn_photos_scored_afresh(mini_root, hand_detector, crop_classifier, task) -> None:
    samples = load_split(mini_root, "val")[:50]
    pipe = load_pipeline(hand_detector, crop_classifier, score_threshold=EVAL_SCORE_THRESHOLD)
    dets, sizes = run_detector(pipe, samples, progress=False)
    resampled = ResampledCocoMap(coco_ground_truth(samples, sizes, task), coco_detections(dets, task))
    whole = score_detections(samples, sizes, dets, task)
    assert resampled(np.arange(len(samples))) == {"mAP50_95": whole["mAP50_95"], "mAP50": whole["mAP50"]}
    rng = np.random.default_rng(3)
    for _ in range(4):  # repeats and missing photos, as a bootstrap draws them
        picked = rng.integers(0, len(samples), len(samples))
        afresh = score_detections([samples[i] for i in picked], [sizes[i] for i in picked],
                                  [dets[i] for i in picked], task)
        assert resampled(picked) == {"mAP50_95": afresh["mAP50_95"], "mAP50": afresh["mAP50"]}


def test_photos_without_user_ids_are_resampled_one_by_one(mini_root) -> None:
    train = load_split(mini_root, "train")[:12]  # the train split's automatic boxes carry no user ids
    unit, groups = groups_of(train)
    assert unit == "image" and [g.tolist() for g in groups] == [[i] for i in range(12)]
    val = load_split(mini_root, "val")
    unit, groups = groups_of(val)
    assert unit == "user" and sorted(i for g in groups for i in g.tolist()) == list(range(len(val)))
    assert len(groups) == len({s.user_id for s in val}) < len(val)


@pytest.mark.parametrize("args, message", [
    (["--bootstrap", "-1"], "--bootstrap -1: a number of resamples, 0 or more"),
    (["--compare-classifier", "x.onnx"], "--compare-classifier needs --compare"),
    (["--data", "/nonexistent-root"], "/nonexistent-root: no such data root"),
    (["--split", "nosuch"], "no annotations for split 'nosuch' (found: subsample, train, val)"),
    (["--model", "README.md"], "unsupported model format '.md'"),
    (["--model", "setup.cfg.onnx"], "no such model file"),
])
def test_bad_input_is_one_line_and_exit_1(mini_root, hand_detector, args, message) -> None:
    base = {"--model": str(hand_detector), "--data": str(mini_root), "--split": "val"}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    cmd = [sys.executable, "-m", "hagrid_edge.cli", "eval", *[x for kv in base.items() for x in kv], "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert message in p.stderr


def test_corrupt_model_file_is_one_line(tmp_path, mini_root, hand_detector) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(hand_detector.read_bytes()[:5000])
    spec = tmp_path / "spec.json"
    spec.write_text(resolve_spec(hand_detector).to_json())
    p = subprocess.run([sys.executable, "-m", "hagrid_edge.cli", "eval", "--model", str(bad), "--spec", str(spec),
                        "--data", str(mini_root)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "broken.onnx: ONNX Runtime cannot load it" in p.stderr
