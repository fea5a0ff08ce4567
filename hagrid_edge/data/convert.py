"""``data convert``: HaGRID annotations -> COCO JSON or YOLO labels, for gestures or plain hands.

COCO: ``<out>/<split>.json`` with pixel boxes (``evaluate.coco_ground_truth``, the same ground truth
``eval`` scores against), image sizes read from the image headers without decoding.
YOLO: ``<out>/labels/<split>/<gesture>/<id>.txt`` beside ``<out>/images/<split>/<gesture>/<id>.jpg``
(links to the original images, not copies) and ``<out>/data.yaml``. Class lists come from
``hagrid_edge.labels``. Every file and split folder appears under its final name only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hagrid_edge.data.annotations import Sample, available_splits, drop_labels, label_names, load_split
from hagrid_edge.errors import DataError
from hagrid_edge.labels import DETECTOR_CLASSES, HAND
from hagrid_edge.paths import write_text_atomic

FORMATS = ("coco", "yolo")
MODES = ("gestures", "hands")


def mode_classes(mode: str) -> tuple[str, ...]:
    return (HAND,) if mode == "hands" else DETECTOR_CLASSES


def image_size(sample: Sample) -> tuple[int, int]:
    """(width, height) from the image header; the pixels are not decoded."""
    try:
        with Image.open(sample.image_path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{sample.source}:{sample.image_id}: image {sample.image_path} not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{sample.source}:{sample.image_id}: cannot read image header ({e})") from None


def _check_labels(samples: Sequence[Sample], mode: str, split: str) -> None:
    if mode == "hands":
        return
    unknown = label_names(samples) - set(DETECTOR_CLASSES)
    if unknown:
        raise DataError(f"split {split!r} has labels outside the {len(DETECTOR_CLASSES)} gesture classes: "
                        f"{sorted(unknown)} (use --mode hands, or --targets to leave those files out)")


def coco_dataset(root: Path, samples: Sequence[Sample], mode: str,
                 progress: Callable[[Iterable], Iterable] | None = None) -> dict:
    from hagrid_edge.evaluate import coco_ground_truth

    sizes = [image_size(s) for s in (progress(samples) if progress else samples)]
    gt = coco_ground_truth(samples, sizes, mode)
    for entry, s in zip(gt["images"], samples):  # noqa: B905 (3.8: no strict); one entry per sample
        entry["file_name"] = Path(os.path.relpath(s.image_path, root)).as_posix()
    return gt


def yolo_lines(sample: Sample, classes: Sequence[str]) -> list[str]:
    """``class cx cy w h`` (normalised, clipped to the image) per box."""
    index = {c: i for i, c in enumerate(classes)}
    lines = []
    for (x, y, w, h), label in zip(sample.boxes.tolist(), sample.labels):  # noqa: B905 (3.8: no strict)
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, 1.0), min(y + h, 1.0)
        cls = 0 if len(classes) == 1 else index[label]
        lines.append(f"{cls} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
    return lines


def _swap_in(built: Path, final: Path) -> None:
    """Put the finished folder ``built`` at ``final``, replacing an older one only once ``built`` is whole."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(built, final)
    if old is not None:
        shutil.rmtree(old)


def write_yolo_split(root: Path, out: Path, split: str, samples: Sequence[Sample], mode: str,
                     progress: Callable[[Iterable], Iterable] | None = None) -> None:
    classes = mode_classes(mode)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{split}.", suffix=".part", dir=out))
    try:
        for s in progress(samples) if progress else samples:
            if not s.image_path.is_file():
                raise DataError(f"{s.source}:{s.image_id}: image {s.image_path} not found")
            rel = Path(s.gesture) / s.image_id
            label = work / "labels" / rel.with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(yolo_lines(s, classes)) + "\n", encoding="utf-8")
            image = work / "images" / rel.with_suffix(s.image_path.suffix)
            image.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(s.image_path.resolve(), image)
        for kind in ("images", "labels"):
            _swap_in(work / kind, out / kind / split)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def yolo_data_yaml(out: Path, mode: str) -> str:
    """data.yaml naming every split converted into ``out`` so far (this run's and earlier ones)."""
    splits = sorted(d.name for d in (out / "images").iterdir() if d.is_dir() and not d.name.startswith("."))
    lines = [f"path: {json.dumps(str(out.resolve()))}"]
    lines += [f"{split}: images/{split}" for split in splits]
    lines.append("names:")
    lines += [f"  {i}: {name}" for i, name in enumerate(mode_classes(mode))]
    return "\n".join(lines) + "\n"


def convert(root: str | Path, to: str, mode: str, out: str | Path, splits: Iterable[str] | None = None,
            targets: Iterable[str] | None = None,
            progress: Callable[[Iterable], Iterable] | None = None, drop_no_gesture: bool = False) -> list[Path]:
    """Convert ``splits`` (default: all) of ``root``; returns the files / folders written.
    ``drop_no_gesture`` leaves out no_gesture boxes but keeps their images (as negatives)."""
    if to not in FORMATS:
        raise DataError(f"--to {to!r}: choose one of {', '.join(FORMATS)}")
    if mode not in MODES:
        raise DataError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataError(f"{root}: no such data root")
    names = list(splits) if splits else available_splits(root)
    if not names:
        raise DataError(f"{root}: no annotation folders (annotations/<split>/ or ann_<split>/)")
    loaded = {split: load_split(root, split, targets) for split in names}
    if drop_no_gesture:
        loaded = {split: drop_labels(samples, keep_empty=True) for split, samples in loaded.items()}
    for split, samples in loaded.items():
        _check_labels(samples, mode, split)
    written = []
    for split, samples in loaded.items():
        if to == "coco":
            path = out / f"{split}.json"
            write_text_atomic(path, json.dumps(coco_dataset(root, samples, mode, progress)))
            written.append(path)
        else:
            write_yolo_split(root, out, split, samples, mode, progress)
            written += [out / "images" / split, out / "labels" / split]
    if to == "yolo":
        write_text_atomic(out / "data.yaml", yolo_data_yaml(out, mode))
        written.append(out / "data.yaml")
    return written
