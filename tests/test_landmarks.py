"""Hand landmarks for real: MediaPipe's landmark models (LiteRT) on HaGRID photos, through run and eval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import need_module
from test_run_cli import HOLD, SEQUENCE, make_video, read_events

from hagrid_edge.cli import main
from hagrid_edge.data.annotations import LANDMARK_POINTS, load_split
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.images import read_rgb
from hagrid_edge.landmarks import (
    DEFAULT_LANDMARKS,
    KNOWN_LANDMARK_MODELS,
    landmark_spec,
    open_landmarker,
    point_errors,
)
from hagrid_edge.paths import DEFAULT_DATA
from hagrid_edge.processing import square_crop_box
from hagrid_edge.spec import ModelSpec, sha256_file

need_module("ai_edge_litert", "the landmark models run on LiteRT (the [tflite] extra)")


@pytest.fixture(scope="module")
def full_model(mediapipe_dir: Path) -> Path:
    return mediapipe_dir / "hand_landmark_full.tflite"


@pytest.fixture(scope="module")
def hands(mini_root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, its annotated hand boxes) for the SEQUENCE val photos, at their own resolution."""
    by_id = {s.image_id: s for s in load_split(mini_root, "val", [g for g, _ in SEQUENCE])}
    out = []
    for _, image_id in SEQUENCE:
        frame = read_rgb(by_id[image_id].image_path)
        out.append((frame, by_id[image_id].boxes_xyxy(frame.shape[1], frame.shape[0])))
    return out


def test_shipped_model_and_its_spec(full_model: Path) -> None:
    assert sha256_file(DEFAULT_LANDMARKS) in KNOWN_LANDMARK_MODELS  # the shipped file is MediaPipe's lite one
    assert DEFAULT_LANDMARKS.stat().st_size < 10 * 2**20
    shipped = landmark_spec(DEFAULT_LANDMARKS)  # from its sidecar
    known = ModelSpec.from_dict(KNOWN_LANDMARK_MODELS[sha256_file(DEFAULT_LANDMARKS)])
    assert shipped.to_dict() == known.to_dict()
    assert landmark_spec(full_model).provenance["file"] == "hand_landmark_full.tflite"  # by sha256, no sidecar
    with pytest.raises(HagridEdgeError, match="not a hand landmark model"):
        landmark_spec(DEFAULT_LANDMARKS.parent / "crops_classifier.onnx")


def test_points_on_real_hands_lite_agrees_with_full(hands: list, full_model: Path) -> None:
    lite, full = open_landmarker(threads=2), open_landmarker(full_model, threads=2)
    rel: list[float] = []
    for frame, boxes in hands:
        a, b = lite(frame, boxes), full(frame, boxes)
        assert a.points.shape == (len(boxes), LANDMARK_POINTS, 2) and lite.last_times.infer > 0
        assert (a.presence > 0.5).all() and (b.presence > 0.5).all()
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        for pts, box in zip(a.points, boxes):  # noqa: B905 (Python 3.8)
            crop = square_crop_box(box, frame.shape[1], frame.shape[0], 1.3)
            assert (pts >= crop[:2] - 2).all() and (pts <= crop[2:] + 2).all()  # on the hand's crop
        rel.extend(point_errors(a.points, b.points) / side)
    # the two models find the same joints: a fraction of the hand's size apart (a fist is the hardest)
    print("lite vs full, mean point distance / box side:", np.round(rel, 3))
    assert max(rel) < 0.3 and np.mean(rel) < 0.15
    empty = lite(np.zeros((480, 640, 3), np.uint8), np.array([[200, 150, 330, 300]], np.float32))
    assert empty.presence[0] < 0.2  # no hand in a black frame


def test_points_follow_the_hand_in_frame_pixels(hands: list) -> None:
    """The same hand moved by (dx, dy) in a larger frame: its points move by exactly (dx, dy)."""
    lite = open_landmarker(threads=2)
    frame, boxes = hands[0]
    box = boxes[:1]
    crop = square_crop_box(box[0], frame.shape[1], frame.shape[0], 1.3)
    side = max(crop[2] - crop[0], crop[3] - crop[1])
    assert crop[0] > 0 and crop[1] > 0 and crop[2] < frame.shape[1] and crop[3] < frame.shape[0]
    dx, dy = 137, 64
    moved = np.zeros((frame.shape[0] + 200, frame.shape[1] + 300, 3), np.uint8)
    moved[dy:dy + frame.shape[0], dx:dx + frame.shape[1]] = frame
    a = lite(frame, box).points[0]
    b = lite(moved, box + np.array([dx, dy, dx, dy], np.float32)).points[0]
    np.testing.assert_allclose(b - a, np.broadcast_to([dx, dy], a.shape), atol=1e-3 * side)


def test_run_with_landmarks_on_a_video(mini_root: Path, hand_detector: Path, crop_classifier: Path,
                                       tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    make_video(mini_root, video)
    ev, out, summary = tmp_path / "ev.jsonl", tmp_path / "out.mp4", tmp_path / "s.json"
    rc = main(["run", "--engine", str(hand_detector), "--classifier", str(crop_classifier), "--source", str(video),
               "--landmarks", "--headless", "--threads", "2", "--events", str(ev), "--output", str(out),
               "--summary", str(summary)])
    assert rc == 0
    events = read_events(ev)
    assert [e["gesture"] for e in events if e["event"] == "start"] == [g for g, _ in SEQUENCE]
    for e in events:
        points = np.asarray(e["landmarks"])
        assert points.shape == (LANDMARK_POINTS, 2) and e["presence"] > 0.5
        x1, y1, x2, y2 = e["box"]
        pad = 0.3 * max(x2 - x1, y2 - y1)
        inside = (points[:, 0] > x1 - pad) & (points[:, 0] < x2 + pad) & (points[:, 1] > y1 - pad) & (
            points[:, 1] < y2 + pad)
        assert inside.all(), e
    s = json.loads(summary.read_text())
    assert s["frames"] == len(SEQUENCE) * HOLD and s["video_frames"] == s["frames"]
    assert s["stage_ms"]["landmarks"]["mean"] > 0


def test_run_with_landmarks_on_the_shipped_sample(hand_detector: Path, crop_classifier: Path,
                                                  tmp_path: Path) -> None:
    ev = tmp_path / "ev.jsonl"
    rc = main(["run", "--engine", str(hand_detector), "--classifier", str(crop_classifier),
               "--source", str(DEFAULT_DATA / "hagrid_dataset_512"), "--landmarks", str(DEFAULT_LANDMARKS),
               "--headless", "--events", str(ev)])
    assert rc == 0
    events = read_events(ev)
    assert len({e["gesture"] for e in events}) >= 10
    assert all(len(e["landmarks"]) == LANDMARK_POINTS for e in events)


def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_agreement_and_point_error(mini_root: Path, full_model: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """hagrid512-mini has no landmark annotations: eval says so and measures lite against full.
    A v1-layout root whose landmarks are full's points then scores lite's point error as exactly
    that agreement, through the annotation reader."""
    args = ["--data", str(mini_root), "--split", "val", "--targets", "palm", "fist", "--limit", "6"]
    r = _eval(capsys, "--model", str(DEFAULT_LANDMARKS), "--reference", str(full_model), *args)
    assert r["task"] == "landmarks" and r["annotated_hands"] == 0 and r["mean_point_error_px"] is None
    assert r["hands"] >= 6 and 0 < r["agreement_pct_box"] < 15

    full = open_landmarker(full_model, threads=2)
    root = tmp_path / "v1"
    entries: dict[str, dict] = {}
    for s in load_split(mini_root, "val", ["palm"])[:3]:
        (root / "test" / "palm").mkdir(parents=True, exist_ok=True)
        shutil.copy(s.image_path, root / "test" / "palm" / s.image_path.name)
        frame = read_rgb(s.image_path)
        h, w = frame.shape[:2]
        points = full(frame, s.boxes_xyxy(w, h)).points / np.array([w, h], np.float32)
        entries[s.image_id] = {"bboxes": s.boxes.tolist(), "labels": s.labels, "landmarks": points.tolist(),
                               "leading_hand": "right", "leading_conf": 1.0, "user_id": s.user_id}
    (root / "ann_test").mkdir()
    (root / "ann_test" / "palm.json").write_text(json.dumps(entries))
    r = _eval(capsys, "--model", str(DEFAULT_LANDMARKS), "--reference", str(full_model), "--data", str(root),
              "--split", "test")
    assert r["annotated_hands"] == r["hands"] >= 3
    assert r["mean_point_error_px"] == pytest.approx(r["agreement_px"], abs=0.02)


def test_eval_reference_needs_a_landmark_model(mini_root: Path, hand_detector: Path, full_model: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(hand_detector), "--reference", str(full_model), "--data", str(mini_root)]) == 1
    assert "--reference" in capsys.readouterr().err


def test_run_refuses_a_model_that_is_not_a_landmark_model(hand_detector: Path, crop_classifier: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--engine", str(hand_detector), "--source", str(DEFAULT_DATA / "hagrid_dataset_512"),
               "--headless", "--landmarks", str(crop_classifier)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "not a hand landmark model" in err[0] and str(crop_classifier) in err[0]


def test_a_landmark_model_is_its_own_task_not_a_classifier(hand_detector: Path, full_model: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Both MediaPipe models are specs of task ``landmarks``; as a gesture classifier the run refuses one."""
    assert landmark_spec(DEFAULT_LANDMARKS).task == landmark_spec(full_model).task == "landmarks"
    rc = main(["run", "--engine", str(hand_detector), "--classifier", str(DEFAULT_LANDMARKS),
               "--source", str(DEFAULT_DATA / "hagrid_dataset_512"), "--headless"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "expected a classifier, the spec says landmarks" in err[0]
