"""HaGRID annotation files: every generation and layout, parsed into one ``Sample`` record.

Generations (fields of one image entry, keyed by image id, one JSON file per gesture):
  v1   bboxes, labels, landmarks, leading_hand, leading_conf, user_id
  2.0  bboxes, labels, user_id
  v2   bboxes, labels, hand_landmarks, united_bbox, united_label, user_id, meta
Boxes are normalised [x, y, w, h]; ``null`` appears for unknown users, missing landmarks and
united boxes, and v1 writes ``[]`` for a hand MediaPipe found no landmarks for.

Layouts (``root`` is the folder holding them):
  v1       train_val_<g>/ + ann_train_val/<g>.json, test/<g>/ + ann_test/, subsample/<g>/ + ann_subsample/
  2.0, v2  hagrid_dataset*/<g>/ + annotations/{train,val,test,subsample}/<g>.json
A v1 root has no separate train and val: asking for either derives it from ``train_val`` by user
(``hagrid_edge.data.splits``). Parsing collects every problem as ``file:image_id: what`` instead
of stopping at the first, so ``data check`` can list them all and loaders can refuse with one line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hagrid_edge.data.splits import DEFAULT_SEED, DEFAULT_VAL_FRACTION, split_by_user
from hagrid_edge.errors import DataError
from hagrid_edge.labels import KNOWN_LABELS, LEADING_HANDS, NO_GESTURE

# The split a v1 root ships instead of separate train and val, and what is derived from it.
TRAIN_VAL = "train_val"
DERIVED_SPLITS = ("train", "val")
LANDMARK_POINTS = 21


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
    source: str = ""  # the annotation file the entry came from

    def boxes_xyxy(self, width: int, height: int) -> np.ndarray:
        """Boxes in pixels of a ``width`` x ``height`` image, as x1, y1, x2, y2."""
        b = self.boxes.astype(np.float32).reshape(-1, 4)
        out = np.empty_like(b)
        out[:, 0], out[:, 1] = b[:, 0] * width, b[:, 1] * height
        out[:, 2], out[:, 3] = (b[:, 0] + b[:, 2]) * width, (b[:, 1] + b[:, 3]) * height
        return out

    def landmark_array(self, index: int) -> np.ndarray | None:
        """Normalised (21, 2) landmarks of box ``index``, or None where the annotation has none."""
        if not self.landmarks or self.landmarks[index] is None:
            return None
        return np.asarray(self.landmarks[index], dtype=np.float32).reshape(-1, 2)

    def gesture_index(self) -> int | None:
        """Index of the box that shows the file's gesture (the leading hand), None if none does."""
        for i, label in enumerate(self.labels):
            if label == self.gesture:
                return i
        return None


@dataclass(frozen=True)
class Problem:
    file: str
    image_id: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.image_id}: {self.what}"


def unsafe_name(name: str) -> str | None:
    """Why ``name`` cannot be one file or folder name inside a data folder (image ids, gesture file
    names, split names become paths: ``../x`` or ``/etc/x`` would read or write outside it), or None."""
    if not name or name.strip() != name:
        return "is empty or has leading/trailing spaces"
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return "is not a plain file name (it holds '/', '\\', NUL or is '.' / '..')"
    if len(name.encode("utf-8", "surrogatepass")) > 200:
        return "is too long for a file name"
    return None


def _is_number(v: Any) -> bool:
    t = type(v)  # exact types: bool is an int subclass but no coordinate
    return t is int or (t is float and math.isfinite(v))


def _check_box(box: Any) -> str | None:
    if type(box) is not list or len(box) != 4:
        return f"box {box!r} is not 4 numbers"
    x, y, w, h = box
    if not (_is_number(x) and _is_number(y) and _is_number(w) and _is_number(h)):
        return f"box {box!r} is not 4 numbers"
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
    if len(points) != LANDMARK_POINTS:
        return f"landmarks have {len(points)} points, not {LANDMARK_POINTS}"
    return None


def _unwrap_united(value: Any) -> Any:
    """v2 writes united_bbox / united_label as one-element lists (holding null for one-handed gestures)."""
    if isinstance(value, list) and len(value) == 1 and (value[0] is None or isinstance(value[0], (list, str))):
        return value[0]
    return value


def _boxes_and_labels(entry: dict, bad: Callable[[str], None]) -> tuple[list, list]:
    """``bboxes`` and ``labels``: lists of the same length, every box inside the image, every label known."""
    boxes, labels = entry.get("bboxes"), entry.get("labels")
    lists_ok = True
    if type(boxes) is not list:
        bad("bboxes missing or not a list")
        boxes, lists_ok = [], False
    if type(labels) is not list or not all(type(v) is str for v in labels):
        bad("labels missing or not a list of names")
        labels, lists_ok = [], False
    if lists_ok and len(boxes) != len(labels):
        bad(f"{len(boxes)} bboxes but {len(labels)} labels")
    for box in boxes:
        err = _check_box(box)
        if err:
            bad(err)
    for label in labels:
        if label not in KNOWN_LABELS:
            bad(f"unknown label {label!r}")
    return boxes, labels


def _landmarks(entry: dict, n_boxes: int, bad: Callable[[str], None]) -> list | None:
    """v1 ``landmarks`` or v2 ``hand_landmarks``: one point list (or an empty one) per box."""
    key = "hand_landmarks" if "hand_landmarks" in entry else "landmarks"
    landmarks = entry.get(key)
    if landmarks is None:
        return None
    if not isinstance(landmarks, list) or len(landmarks) != n_boxes:
        bad(f"{key} has {len(landmarks) if isinstance(landmarks, list) else 'no'} entries for {n_boxes} bboxes")
        return None
    for pts in landmarks:
        err = _check_points(pts)
        if err:
            bad(f"{key}: {err}")
    return [pts or None for pts in landmarks]


def _check_extras(entry: dict, bad: Callable[[str], None]) -> None:
    """The optional keys: leading hand and its confidence, user id, the united box and label, meta."""
    leading = entry.get("leading_hand")
    if leading is not None and leading not in LEADING_HANDS:
        bad(f"leading_hand {leading!r} is not left or right")
    conf = entry.get("leading_conf")
    if conf is not None and not _is_number(conf):
        bad(f"leading_conf {conf!r} is not a number")
    user = entry.get("user_id")
    if user is not None and not isinstance(user, str):
        bad(f"user_id {user!r} is not a string")
    united_box, united_label = _unwrap_united(entry.get("united_bbox")), _unwrap_united(entry.get("united_label"))
    if united_box is not None:
        err = _check_box(united_box)
        if err:
            bad(f"united_bbox: {err}")
    if united_label is not None and united_label not in KNOWN_LABELS:
        bad(f"united_label {united_label!r} is not a known label")
    meta = entry.get("meta")
    if meta is not None and not isinstance(meta, dict):
        bad(f"meta is {type(meta).__name__}, not an object")


def parse_entry(image_id: str, entry: Any, gesture: str, image_dir: Path, source: str,
                problems: list[Problem]) -> Sample | None:
    """One annotation entry -> Sample, or None with its problems appended."""
    def bad(what: str) -> None:
        problems.append(Problem(source, image_id, what))

    why = unsafe_name(image_id)
    if why:
        bad(f"image id {image_id!r} {why}")
        return None
    if not isinstance(entry, dict):
        bad(f"entry is {type(entry).__name__}, not an object")
        return None
    n_before = len(problems)
    boxes, labels = _boxes_and_labels(entry, bad)
    landmarks = _landmarks(entry, len(boxes), bad)
    _check_extras(entry, bad)
    if len(problems) > n_before:
        return None
    conf = entry.get("leading_conf")
    return Sample(
        image_id=image_id,
        gesture=gesture,
        image_path=image_dir / f"{image_id}.jpg",
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=list(labels),
        user_id=entry.get("user_id"),
        landmarks=landmarks,
        leading_hand=entry.get("leading_hand"),
        leading_conf=float(conf) if conf is not None else None,
        united_box=_unwrap_united(entry.get("united_bbox")),
        united_label=_unwrap_united(entry.get("united_label")),
        meta=entry.get("meta"),
        source=source,
    )


def parse_file(path: Path, image_dir: Path, problems: list[Problem]) -> list[Sample]:
    """All entries of one ``<gesture>.json``; problems are appended, bad entries skipped."""
    gesture = path.stem
    why = unsafe_name(gesture)
    if why:
        problems.append(Problem(str(path), "-", f"gesture name {gesture!r} (from the file name) {why}"))
        return []
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
    for cand in (root / "annotations" / split, root / "hagrid_annotations" / split, root / f"ann_{split}"):
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
    """Splits with annotation folders under ``root`` (``train_val`` for a v1 root, not its derived halves)."""
    names: set[str] = set()
    for parent in (root / "annotations", root / "hagrid_annotations"):
        if parent.is_dir():
            names |= {d.name for d in parent.iterdir() if d.is_dir()}
    names |= {d.name[len("ann_"):] for d in root.glob("ann_*") if d.is_dir()}
    return sorted(names)


def load_split(root: str | Path, split: str, targets: Iterable[str] | None = None,
               problems: list[Problem] | None = None, *, val_fraction: float = DEFAULT_VAL_FRACTION,
               seed: int = DEFAULT_SEED) -> list[Sample]:
    """Samples of ``split`` under ``root``. With ``problems`` given, bad entries are collected there
    and skipped; without it, the first problem raises ``DataError``.

    ``targets`` keeps only those gestures' files. On a v1 root, ``train`` and ``val`` are the two
    user-disjoint parts of ``train_val`` (``val_fraction`` of the users, chosen by ``seed``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data root")
    for flag, name in [("--split", split), *(("--targets", t) for t in targets or ())]:
        why = unsafe_name(name)
        if why:
            raise DataError(f"{flag} {name!r}: {why}")
    ann = annotation_dir(root, split)
    if ann is None and split in DERIVED_SPLITS and annotation_dir(root, TRAIN_VAL) is not None:
        pool = load_split(root, TRAIN_VAL, targets, problems)
        train, val = split_by_user(pool, val_fraction, seed)
        return train if split == "train" else val
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


# ---- index helpers --------------------------------------------------------------------------
def drop_labels(samples: Iterable[Sample], labels: Iterable[str] = (NO_GESTURE,),
                keep_empty: bool = False) -> list[Sample]:
    """Copies of ``samples`` without the boxes (and their landmarks) labelled ``labels``.

    Images left with no box are dropped unless ``keep_empty`` (a detector's pure negatives)."""
    drop = set(labels)
    out = []
    for s in samples:
        keep = [i for i, label in enumerate(s.labels) if label not in drop]
        if len(keep) == len(s.labels):
            out.append(s)
            continue
        if not keep and not keep_empty:
            continue
        out.append(replace(
            s, boxes=s.boxes[keep].reshape(-1, 4), labels=[s.labels[i] for i in keep],
            landmarks=[s.landmarks[i] for i in keep] if s.landmarks is not None else None))
    return out


def label_names(samples: Iterable[Sample]) -> set[str]:
    """Every box label used by ``samples``."""
    return {label for s in samples for label in s.labels}


def resolve_splits(root: str | Path, splits: Iterable[str] | None = None) -> tuple[Path, list[str]]:
    """The data root and the splits to process: ``splits`` or every split with annotations."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data root")
    names = list(splits) if splits else available_splits(root)
    if not names:
        raise DataError(f"{root}: no annotation folders (annotations/<split>/ or ann_<split>/)")
    return root, names
