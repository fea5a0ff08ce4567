"""``data stats`` and ``data convert`` on the real HaGRID annotations and images."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from hagrid_edge.cli import main
from hagrid_edge.data.annotations import load_split
from hagrid_edge.labels import DETECTOR_CLASSES


def raw_split(root: Path, split: str) -> dict[str, dict]:
    """{gesture: entries} read straight from the JSON files, as a reference independent of the parser."""
    return {f.stem: json.loads(f.read_text()) for f in sorted((root / "annotations" / split).glob("*.json"))}


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_stats_json_mini(mini_root: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = run_cli(capsys, "data", "stats", str(mini_root), "--json")
    assert rc == 0
    stats = json.loads(out)
    assert sorted(stats) == ["subsample", "train", "val"]
    for split, st in stats.items():
        raw = raw_split(mini_root, split)
        entries = [e for per in raw.values() for e in per.values()]
        labels = Counter(label for e in entries for label in e["labels"])
        assert st["images"] == len(entries)
        assert st["boxes"] == sum(labels.values())
        assert st["users"] == len({e["user_id"] for e in entries if e["user_id"] is not None})
        assert st["unknown_user_images"] == sum(e["user_id"] is None for e in entries)
        for name, c in st["classes"].items():
            assert c["boxes"] == labels[name] and c["images"] == len(raw.get(name, {}))
    assert stats["val"]["users"] == 117  # as shared/data/README.md says
    assert stats["train"]["users"] == 0 and stats["train"]["unknown_user_images"] == 1205


def test_stats_text_full_val(val_full_root: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = run_cli(capsys, "data", "stats", str(val_full_root))
    assert rc == 0
    first = out.splitlines()[0]
    assert first.startswith("val: 53982 images, 66035 boxes, ") and "(0 images without user_id)" in first
    assert any(line.split()[:2] == ["no_gesture", "0"] for line in out.splitlines())


def test_coco_gestures_and_hands(mini_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = run_cli(capsys, "data", "convert", str(mini_root), "--to", "coco", "--mode", "gestures",
                         "--out", str(tmp_path), "--split", "val")
    assert rc == 0 and out.split() == [str(tmp_path / "val.json")]
    coco = COCO(str(tmp_path / "val.json"))
    raw = raw_split(mini_root, "val")
    assert len(coco.imgs) == 167 and len(coco.anns) == sum(len(e["bboxes"]) for p in raw.values() for e in p.values())
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(DETECTOR_CLASSES)
    img = next(i for i in coco.imgs.values() if i["file_name"].startswith("hagrid_dataset_512/peace/"))
    path = mini_root / img["file_name"]
    with Image.open(path) as im:
        assert (img["width"], img["height"]) == im.size
    entry = raw["peace"][path.stem]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
    w, h = img["width"], img["height"]
    expected = [[x * w, y * h, bw * w, bh * h] for x, y, bw, bh in entry["bboxes"]]
    np.testing.assert_allclose([a["bbox"] for a in anns], expected, rtol=1e-5)
    assert [coco.cats[a["category_id"]]["name"] for a in anns] == entry["labels"]

    run_cli(capsys, "data", "convert", str(mini_root), "--to", "coco", "--mode", "hands", "--out", str(tmp_path),
            "--split", "val")
    hands = json.loads((tmp_path / "val.json").read_text())
    assert [c["name"] for c in hands["categories"]] == ["hand"] and len(hands["annotations"]) == len(coco.anns)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    run_cli(capsys, "data", "convert", str(mini_root), "--to", "coco", "--out", str(tmp_path), "--split", "val",
            "--drop-no-gesture")
    dropped = json.loads((tmp_path / "val.json").read_text())
    no_gesture = sum(e["labels"].count("no_gesture") for p in raw.values() for e in p.values())
    assert no_gesture and len(dropped["annotations"]) == len(coco.anns) - no_gesture
    assert len(dropped["images"]) == 167


def test_yolo(mini_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "yolo"
    assert main(["data", "convert", str(mini_root), "--to", "yolo", "--mode", "gestures", "--out", str(out),
                 "--split", "val", "--split", "subsample"]) == 0
    samples = load_split(mini_root, "val")
    labels = sorted((out / "labels" / "val").rglob("*.txt"))
    assert len(labels) == len(samples) == 167
    s = next(x for x in samples if len(x.labels) == 2)
    lines = (out / "labels" / "val" / s.gesture / f"{s.image_id}.txt").read_text().splitlines()
    for line, (x, y, w, h), label in zip(lines, s.boxes.tolist(), s.labels, strict=True):
        cls, cx, cy, bw, bh = line.split()
        assert DETECTOR_CLASSES[int(cls)] == label
        np.testing.assert_allclose([float(cx), float(cy), float(bw), float(bh)],
                                   [x + w / 2, y + h / 2, w, h], atol=2e-6)
    image = out / "images" / "val" / s.gesture / f"{s.image_id}.jpg"
    assert image.is_symlink() and image.resolve() == s.image_path.resolve()
    data = (out / "data.yaml").read_text()
    assert "subsample: images/subsample" in data and "val: images/val" in data and "  18: no_gesture" in data
    # Converting again (hands) replaces the splits whole and leaves no temporary folders; one split
    # alone cannot change the mode (data.yaml has one class list for every split it names).
    assert main(["data", "convert", str(mini_root), "--to", "yolo", "--mode", "hands", "--out", str(out),
                 "--split", "val"]) == 1
    assert main(["data", "convert", str(mini_root), "--to", "yolo", "--mode", "hands", "--out", str(out),
                 "--split", "val", "--split", "subsample"]) == 0
    assert (out / "labels" / "val" / s.gesture / f"{s.image_id}.txt").read_text().startswith("0 ")
    assert "  0: hand\n" in (out / "data.yaml").read_text()
    assert not [p for p in out.rglob(".*")]


def test_convert_missing_image_fails_cleanly(mini_root: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """The full val annotations have no images: COCO needs their sizes, so convert refuses in one line."""
    ann = tmp_path / "root" / "annotations" / "val"
    ann.mkdir(parents=True)
    os.symlink(mini_root / "annotations" / "val" / "call.json", ann / "call.json")
    rc, out, err = run_cli(capsys, "data", "convert", str(tmp_path / "root"), "--to", "coco",
                           "--out", str(tmp_path / "out"))
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert f"{ann / 'call.json'}:" in err and "not found" in err
    assert not (tmp_path / "out" / "val.json").exists()


def test_bad_json_one_line(mini_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann = tmp_path / "annotations" / "val"
    ann.mkdir(parents=True)
    (ann / "mute.json").write_text('{"a": {"bboxes": [[0.1, 0.1, 0.2, 0.2]], "labels": ["mute"]}, "b": 5}')
    for argv in (["stats", str(tmp_path)], ["convert", str(tmp_path), "--to", "yolo", "--out", str(tmp_path / "o")]):
        rc, out, err = run_cli(capsys, "data", *argv)
        assert rc == 1 and err.strip() == f"hagrid-edge data: error: {ann / 'mute.json'}:b: entry is int, not an object"
