"""Annotation parsing of every HaGRID generation and layout, the index helpers and user splits.

The real files here are HaGRID 2.0 (bboxes, labels, user_id). v1 and v2 fields do not occur in
them, so those cases take a real entry and add the fields the authors' README describes.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hagrid_edge.data.annotations import (
    LANDMARK_POINTS,
    Problem,
    available_splits,
    drop_labels,
    load_split,
    parse_file,
)
from hagrid_edge.data.splits import group_key, shared_users, split_by_user
from hagrid_edge.errors import DataError
from hagrid_edge.labels import NO_GESTURE


def real_entries(mini_root: Path, gesture: str, split: str = "val") -> dict:
    return json.loads((mini_root / "annotations" / split / f"{gesture}.json").read_text())


def hand_points(box: list[float]) -> list[list[float]]:
    """21 points spread over a box, standing in for MediaPipe's landmarks of that hand."""
    x, y, w, h = box
    return [[x + w * (i % 5) / 4, y + h * (i // 5) / 4] for i in range(LANDMARK_POINTS)]


def as_v1(entry: dict) -> dict:
    """A real 2.0 entry with the v1 fields: landmarks per hand ([] for the no_gesture hand),
    leading_hand and leading_conf."""
    e = copy.deepcopy(entry)
    e["landmarks"] = [[] if label == NO_GESTURE else hand_points(box)
                      for box, label in zip(e["bboxes"], e["labels"], strict=True)]
    e["leading_hand"] = "right"
    e["leading_conf"] = 1.0
    return e


def as_v2(entry: dict, two_handed: bool) -> dict:
    """A real entry with the v2 fields: hand_landmarks, united_bbox/label ([null] when one-handed), meta."""
    e = copy.deepcopy(entry)
    e["hand_landmarks"] = [hand_points(b) for b in e["bboxes"]]
    if two_handed:
        xs = [b[0] for b in e["bboxes"]] + [b[0] + b[2] for b in e["bboxes"]]
        ys = [b[1] for b in e["bboxes"]] + [b[1] + b[3] for b in e["bboxes"]]
        e["united_bbox"] = [[min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]]
        e["united_label"] = [e["labels"][0]]
    else:
        e["united_bbox"], e["united_label"] = [None], [None]
    e["meta"] = {"age": [31.2], "gender": ["female"], "race": ["White"]}
    return e


@pytest.fixture
def v1_root(mini_root: Path, tmp_path: Path) -> Path:
    """v1 layout: train_val_<g>/ + ann_train_val/<g>.json, built from real val entries and images."""
    for gesture in ("call", "like"):
        entries = {k: as_v1(v) for k, v in real_entries(mini_root, gesture).items()}
        (tmp_path / "ann_train_val").mkdir(exist_ok=True)
        (tmp_path / "ann_train_val" / f"{gesture}.json").write_text(json.dumps(entries))
        images = tmp_path / f"train_val_{gesture}"
        images.mkdir()
        for image_id in entries:
            shutil.copy(mini_root / "hagrid_dataset_512" / gesture / f"{image_id}.jpg", images)
    return tmp_path


def test_real_2_0_layout(mini_root: Path) -> None:
    assert available_splits(mini_root) == ["subsample", "train", "val"]
    val = load_split(mini_root, "val")
    raw = real_entries(mini_root, "call")
    assert len(val) == 167
    call = {s.image_id: s for s in val if s.gesture == "call"}
    assert call.keys() == raw.keys()
    image_id, entry = next(iter(raw.items()))
    s = call[image_id]
    np.testing.assert_allclose(s.boxes, np.asarray(entry["bboxes"], np.float32))
    assert s.labels == entry["labels"] and s.user_id == entry["user_id"]
    assert s.image_path == mini_root / "hagrid_dataset_512" / "call" / f"{image_id}.jpg"
    assert s.image_path.is_file()
    assert s.landmarks is None and s.united_box is None and s.source.endswith("val/call.json")
    # The automatically boxed train split has user_id null throughout.
    train = load_split(mini_root, "train", targets=["fist"])
    assert train and all(t.user_id is None and t.gesture == "fist" for t in train)


def test_v1_layout_and_fields(v1_root: Path, mini_root: Path) -> None:
    assert available_splits(v1_root) == ["train_val"]
    pool = load_split(v1_root, "train_val")
    assert len(pool) == len(real_entries(mini_root, "call")) + len(real_entries(mini_root, "like"))
    for s in pool:
        assert s.image_path.is_file() and s.image_path.parent.name == f"train_val_{s.gesture}"
        assert s.leading_hand == "right" and s.leading_conf == 1.0
        assert s.landmarks is not None and len(s.landmarks) == len(s.labels)
        for i, label in enumerate(s.labels):
            pts = s.landmark_array(i)
            if label == NO_GESTURE:
                assert pts is None  # v1's [] for a hand without landmarks
            else:
                assert pts.shape == (LANDMARK_POINTS, 2)
                np.testing.assert_allclose(pts[0], s.boxes[i, :2])
        assert s.labels[s.gesture_index()] == s.gesture


def test_v1_train_val_derived_by_user(v1_root: Path) -> None:
    pool = load_split(v1_root, "train_val")
    train, val = load_split(v1_root, "train", val_fraction=0.3), load_split(v1_root, "val", val_fraction=0.3)
    assert sorted(s.image_id for s in train + val) == sorted(s.image_id for s in pool)
    assert train and val and not shared_users(train, val)
    again = load_split(v1_root, "val", val_fraction=0.3)
    assert [s.image_id for s in again] == [s.image_id for s in val]
    other_seed = load_split(v1_root, "val", val_fraction=0.3, seed=7)
    assert {s.image_id for s in other_seed} != {s.image_id for s in val}


def test_v2_fields_and_nulls(mini_root: Path, tmp_path: Path) -> None:
    raw = real_entries(mini_root, "peace")
    two = next(k for k, v in raw.items() if len(v["bboxes"]) == 2)
    one = next(k for k, v in raw.items() if len(v["bboxes"]) == 1)
    entries = {two: as_v2(raw[two], True), one: as_v2(raw[one], False)}
    entries[one]["user_id"] = None
    entries[one]["hand_landmarks"][0] = None  # no landmarks found for that hand
    ann = tmp_path / "annotations" / "test"
    ann.mkdir(parents=True)
    (ann / "peace.json").write_text(json.dumps(entries))
    (tmp_path / "hagrid_dataset" / "peace").mkdir(parents=True)
    samples = {s.image_id: s for s in load_split(tmp_path, "test")}
    s2, s1 = samples[two], samples[one]
    assert s2.image_path == tmp_path / "hagrid_dataset" / "peace" / f"{two}.jpg"
    assert s2.united_label == raw[two]["labels"][0] and len(s2.united_box) == 4
    assert s2.meta == {"age": [31.2], "gender": ["female"], "race": ["White"]}
    assert s2.landmark_array(1).shape == (LANDMARK_POINTS, 2)
    assert s1.united_box is None and s1.united_label is None and s1.user_id is None
    assert s1.landmark_array(0) is None


@pytest.mark.parametrize("mutate, what", [
    (lambda e: e.update(bboxes="0.1 0.2 0.3 0.4"), "bboxes missing or not a list"),
    (lambda e: e.update(labels=[7]), "labels missing or not a list of names"),
    (lambda e: e["bboxes"].append([0.1, 0.1, 0.1, 0.1]), "2 bboxes but 1 labels"),
    (lambda e: e["bboxes"][0].__setitem__(0, 0.95), "lies outside the image"),
    (lambda e: e["bboxes"][0].__setitem__(2, 0.0), "has no positive size"),
    (lambda e: e["bboxes"][0].__setitem__(1, True), "is not 4 numbers"),
    (lambda e: e.update(labels=["thumbs_sideways"]), "unknown label 'thumbs_sideways'"),
    (lambda e: e.update(user_id=12), "user_id 12 is not a string"),
    (lambda e: e.update(landmarks=[[[0.1, 0.2]] * 3]), "landmarks: landmarks have 3 points"),
    (lambda e: e.update(leading_hand="both"), "leading_hand 'both' is not left or right"),
    (lambda e: e.update(united_label=["wave"]), "united_label 'wave' is not a known label"),
])
def test_bad_entries_named(mini_root: Path, tmp_path: Path, mutate, what: str) -> None:
    raw = real_entries(mini_root, "call")
    image_id = next(k for k, v in raw.items() if len(v["bboxes"]) == 1)
    mutate(raw[image_id])
    path = tmp_path / "call.json"
    path.write_text(json.dumps(raw))
    problems: list[Problem] = []
    samples = parse_file(path, tmp_path, problems)
    assert len(samples) == len(raw) - 1
    assert len(problems) == 1 and problems[0].image_id == image_id and what in problems[0].what
    assert str(problems[0]).startswith(f"{path}:{image_id}: ")


def test_strict_load_raises_one_line(mini_root: Path, tmp_path: Path) -> None:
    ann = tmp_path / "annotations" / "val"
    ann.mkdir(parents=True)
    (ann / "call.json").write_text((mini_root / "annotations/val/call.json").read_text()[:300])
    with pytest.raises(DataError, match=r"call\.json:-: not valid JSON"):
        load_split(tmp_path, "val")
    (ann / "call.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="top level is list"):
        load_split(tmp_path, "val")
    with pytest.raises(DataError, match="no annotations for split 'test' .found: val"):
        load_split(tmp_path, "test")
    with pytest.raises(DataError, match="no such data root"):
        load_split(tmp_path / "missing", "val")
    with pytest.raises(DataError, match=r"no annotation file for target\(s\) \['rock'\]"):
        load_split(tmp_path, "val", targets=["rock"])


def test_drop_no_gesture(mini_root: Path) -> None:
    val = load_split(mini_root, "val")
    with_ng = [s for s in val if NO_GESTURE in s.labels]
    assert with_ng
    kept = drop_labels(val)
    assert len(kept) == len(val)  # every val image also shows its gesture
    assert all(NO_GESTURE not in s.labels and len(s.boxes) == len(s.labels) for s in kept)
    assert sum(len(s.labels) for s in kept) == sum(len(s.labels) for s in val) - \
        sum(s.labels.count(NO_GESTURE) for s in val)
    assert NO_GESTURE in with_ng[0].labels  # the originals are untouched
    only_ng = drop_labels(val, [s.gesture for s in val])
    assert len(only_ng) == len(with_ng)
    assert len(drop_labels(val, [s.gesture for s in val], keep_empty=True)) == len(val)


def test_user_split_on_full_val(val_full_root: Path) -> None:
    samples = load_split(val_full_root, "val")
    train, val = split_by_user(samples, 0.2, seed=3)
    assert len(train) + len(val) == len(samples) == 53982
    assert not shared_users(train, val)
    users = {s.user_id for s in samples}
    val_users = {s.user_id for s in val}
    assert 0.17 < len(val_users) / len(users) < 0.23
    assert split_by_user(samples, 0.2, seed=3)[1] == val  # deterministic
    # A null user_id is its own group, keyed by the image.
    s = copy.copy(samples[0])
    s.user_id = None
    assert group_key(s) == f"image:{s.image_id}"
    with pytest.raises(ValueError):
        split_by_user(samples, 1.5)
