"""HaGRID annotation files: every generation and layout, parsed into one ``Sample`` record.

Generations (fields of one image entry, keyed by image id, one JSON file per gesture):
  v1   bboxes, labels, landmarks, leading_hand, leading_conf, user_id
  2.0  bboxes, labels, user_id
  v2   bboxes, labels, hand_landmarks, united_bbox, united_label, user_id, meta
Boxes are normalised [x, y, w, h]; ``null`` appears for unknown users, missing landmarks and
united boxes. Parsing collects every problem as ``file:image_id: what`` instead of stopping at
the first, so ``data check`` can list them all and loaders can refuse with one clear line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hagrid_edge.errors import DataError
from hagrid_edge.labels import KNOWN_LABELS, LEADING_HANDS


@dataclass
class Sample:
    image_id: str
    gesture: str  # the gesture of the file (and image folder) the entry came from
    image_path: Path
    boxes: np.ndarray  # (n, 4) normalised x, y, w, h
    labels: list[str]
    user_id: str | None = None
    landmarks: list[list[list[float]] | None] | None = None  # per box, 21 (x, y) points or None
    leading_hand: str | None = None
    leading_conf: float | None = None
    united_box: list[float] | None = None
    united_label: str | None = None
    meta: dict[str, Any] | None = None

    def boxes_xyxy(self, width: int, height: int) -> np.ndarray:
        """Boxes in pixels of a ``width`` x ``height`` image, as x1, y1, x2, y2."""
        b = self.boxes.astype(np.float32).reshape(-1, 4)
        out = np.empty_like(b)
        out[:, 0], out[:, 1] = b[:, 0] * width, b[:, 1] * height
        out[:, 2], out[:, 3] = (b[:, 0] + b[:, 2]) * width, (b[:, 1] + b[:, 3]) * height
        return out


@dataclass(frozen=True)
class Problem:
    file: str
    image_id: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.image_id}: {self.what}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_box(box: Any) -> str | None:
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        return f"box {box!r} is not 4 numbers"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"box {box} has no positive size"
    eps = 1e-3  # annotations carry float noise at the borders
    if x < -eps or y < -eps or x + w > 1 + eps or y + h > 1 + eps:
        return f"box {box} lies outside the image [0, 1]"
    return None


def _check_points(points: Any) -> str | None:
    if points is None or points == []:
        return None
    if not isinstance(points, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in points):
        return "landmarks are not a list of [x, y] points"
    return None


def parse_entry(image_id: str, entry: Any, gesture: str, image_dir: Path, source: str,
                problems: list[Problem]) -> Sample | None:
    """One annotation entry -> Sample, or None with its problems appended."""
    def bad(what: str) -> None:
        problems.append(Problem(source, image_id, what))

    if not isinstance(entry, dict):
        bad(f"entry is {type(entry).__name__}, not an object")
        return None
    n_before = len(problems)
    boxes, labels = entry.get("bboxes"), entry.get("labels")
    if not isinstance(boxes, list):
        bad("bboxes missing or not a list")
        boxes = []
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        bad("labels missing or not a list of names")
        labels = []
    if len(boxes) != len(labels):
        bad(f"{len(boxes)} bboxes but {len(labels)} labels")
    for box in boxes:
        err = _check_box(box)
        if err:
            bad(err)
    for label in labels:
        if label not in KNOWN_LABELS:
            bad(f"unknown label {label!r}")
    key = "hand_landmarks" if "hand_landmarks" in entry else "landmarks"
    landmarks = entry.get(key)
    if landmarks is not None:
        if not isinstance(landmarks, list) or len(landmarks) != len(boxes):
            bad(f"{key} has {len(landmarks) if isinstance(landmarks, list) else 'no'} entries for {len(boxes)} bboxes")
            landmarks = None
        else:
            for pts in landmarks:
                err = _check_points(pts)
                if err:
                    bad(err)
            landmarks = [pts or None for pts in landmarks]
    leading = entry.get("leading_hand")
    if leading is not None and leading not in LEADING_HANDS:
        bad(f"leading_hand {leading!r} is not left or right")
    conf = entry.get("leading_conf")
    if conf is not None and not _is_number(conf):
        bad(f"leading_conf {conf!r} is not a number")
    user = entry.get("user_id")
    if user is not None and not isinstance(user, str):
        bad(f"user_id {user!r} is not a string")
    united_box, united_label = entry.get("united_bbox"), entry.get("united_label")
    # v2 writes united_bbox / united_label as one-element lists holding null when there is none.
    if isinstance(united_box, list) and united_box and (united_box[0] is None or isinstance(united_box[0], list)):
        united_box = united_box[0]
    if isinstance(united_label, list):
        united_label = united_label[0] if united_label else None
    if united_box is not None:
        err = _check_box(united_box)
        if err:
            bad(f"united_bbox: {err}")
    if len(problems) > n_before:
        return None
    return Sample(
        image_id=image_id,
        gesture=gesture,
        image_path=image_dir / f"{image_id}.jpg",
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=list(labels),
        user_id=user,
        landmarks=landmarks,
        leading_hand=leading,
        leading_conf=float(conf) if conf is not None else None,
        united_box=united_box,
        united_label=united_label,
        meta=entry.get("meta") if isinstance(entry.get("meta"), dict) else None,
    )


def parse_file(path: Path, image_dir: Path, problems: list[Problem]) -> list[Sample]:
    """All entries of one ``<gesture>.json``; problems are appended, bad entries skipped."""
    gesture = path.stem
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        problems.append(Problem(str(path), "-", f"cannot read ({e.strerror})"))
        return []
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(Problem(str(path), "-", f"not valid JSON ({e})"))
        return []
    if not isinstance(data, dict):
        problems.append(Problem(str(path), "-", f"top level is {type(data).__name__}, not an object of entries"))
        return []
    out = []
    for image_id, entry in data.items():
        sample = parse_entry(image_id, entry, gesture, image_dir, str(path), problems)
        if sample is not None:
            out.append(sample)
    return out


# ---- layouts --------------------------------------------------------------------------------
def annotation_dir(root: Path, split: str) -> Path | None:
    """Where ``split``'s per-gesture JSON files live, for either layout."""
    for cand in (root / "annotations" / split, root / f"ann_{split}"):
        if cand.is_dir():
            return cand
    return None


def image_dir(root: Path, split: str, gesture: str) -> Path:
    """Where the images of ``gesture`` live: ``hagrid_dataset*/<g>/``, ``<split>_<g>/`` or ``<split>/<g>/``."""
    cands = [d / gesture for d in sorted(root.glob("hagrid_dataset*")) if d.is_dir()]
    cands += [root / f"{split}_{gesture}", root / split / gesture, root / gesture]
    for cand in cands:
        if cand.is_dir():
            return cand
    return cands[0] if cands else root / split / gesture


def available_splits(root: Path) -> list[str]:
    names = set()
    if (root / "annotations").is_dir():
        names |= {d.name for d in (root / "annotations").iterdir() if d.is_dir()}
    names |= {d.name.removeprefix("ann_") for d in root.glob("ann_*") if d.is_dir()}
    return sorted(names)


def load_split(root: str | Path, split: str, targets: list[str] | None = None,
               problems: list[Problem] | None = None) -> list[Sample]:
    """Samples of ``split`` under ``root``. With ``problems`` given, bad entries are collected there
    and skipped; without it, the first problem raises ``DataError``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data root")
    ann = annotation_dir(root, split)
    if ann is None:
        have = available_splits(root)
        raise DataError(f"{root}: no annotations for split {split!r} (found: {', '.join(have) or 'none'})")
    files = sorted(ann.glob("*.json"))
    if targets:
        wanted = set(targets)
        files = [f for f in files if f.stem in wanted]
        missing = wanted - {f.stem for f in files}
        if missing:
            raise DataError(f"{ann}: no annotation file for target(s) {sorted(missing)}")
    if not files:
        raise DataError(f"{ann}: no <gesture>.json annotation files")
    collected: list[Problem] = [] if problems is None else problems
    samples: list[Sample] = []
    for f in files:
        samples += parse_file(f, image_dir(root, split, f.stem), collected)
        if problems is None and collected:
            raise DataError(str(collected[0]))
    return samples
