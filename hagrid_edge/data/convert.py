"""``data convert``: HaGRID annotations -> COCO JSON or YOLO labels, for gestures or plain hands.

COCO: ``<out>/<split>.json`` with pixel boxes (``evaluate.coco_ground_truth``, the same ground truth
``eval`` scores against), image sizes read from the image headers without decoding.
YOLO: ``<out>/labels/<split>/<gesture>/<id>.txt`` beside ``<out>/images/<split>/<gesture>/<id>.jpg``
(links to the original images, not copies) and ``<out>/data.yaml``. Class lists come from
``hagrid_edge.labels``. Every file and split folder appears under its final name only when complete.

Convert never replaces what it did not write: an existing ``<split>.json``, ``data.yaml`` or split
folder is replaced only if an earlier conversion made it (the COCO file's ``info``, data.yaml's first
line record that); anything else in ``--out`` is refused in one line and left as it is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hagrid_edge.data.annotations import (
    Sample,
    available_splits,
    drop_labels,
    label_names,
    load_split,
    unsafe_name,
)
from hagrid_edge.errors import DataError
from hagrid_edge.images import bomb_message
from hagrid_edge.labels import DETECTOR_CLASSES, HAND
from hagrid_edge.paths import write_text_atomic

FORMATS = ("coco", "yolo")
MODES = ("gestures", "hands")
MADE_BY = "written by hagrid-edge data convert"
_YAML_HEADER = re.compile(rf"# {MADE_BY} --mode (\w+): splits ?(.*)")


def mode_classes(mode: str) -> tuple[str, ...]:
    return (HAND,) if mode == "hands" else DETECTOR_CLASSES


def image_size(sample: Sample) -> tuple[int, int]:
    """(width, height) from the image header; the pixels are not decoded."""
    try:
        with Image.open(sample.image_path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{sample.source}:{sample.image_id}: image {sample.image_path} not found") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{sample.source}:{sample.image_id}: {sample.image_path}: {bomb_message(e)}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
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
    gt = {"info": {"description": MADE_BY, "mode": mode}, **coco_ground_truth(samples, sizes, mode)}
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
    except OSError as e:  # a full disk names no file: name the split being written
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(out / "labels" / split)) from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def yolo_owner(out: Path) -> tuple[str | None, list[str]]:
    """The mode and splits of the conversion that wrote ``out/data.yaml`` ((None, []) if there is none);
    ``DataError`` if data.yaml is someone else's."""
    path = out / "data.yaml"
    if not path.exists() and not path.is_symlink():
        return None, []
    try:
        first = path.read_text(encoding="utf-8", errors="replace").partition("\n")[0]
    except OSError as e:
        raise DataError(f"--out {out}: cannot read {path} ({e.strerror})") from None
    m = _YAML_HEADER.fullmatch(first)
    if not m:
        raise DataError(f"--out {out}: {path} was not written by data convert; it is left as it is "
                        "(choose another --out)")
    return m.group(1), m.group(2).split()


def _check_out(out: Path, to: str, mode: str, names: Sequence[str]) -> list[str]:
    """Refuse to replace anything in ``out`` that an earlier conversion did not write; returns the
    splits of earlier YOLO conversions into ``out`` that stay (listed in data.yaml with this run's)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file, not a folder")
    if to == "coco":
        for split in names:
            path = out / f"{split}.json"
            if path.is_dir() or ((path.exists() or path.is_symlink()) and not _coco_is_ours(path)):
                raise DataError(f"--out {out}: {path} was not written by data convert; it is left as it is "
                                "(choose another --out)")
        return []
    have_mode, owned = yolo_owner(out)
    for split in names:
        for kind in ("images", "labels"):
            path = out / kind / split
            if (path.exists() or path.is_symlink()) and split not in owned:
                raise DataError(f"--out {out}: {path} was not written by data convert; it is left as it is "
                                "(choose another --out)")
    kept = [s for s in owned if s not in names and (out / "images" / s).is_dir()]
    if kept and have_mode != mode:
        raise DataError(f"--out {out}: holds --mode {have_mode} splits ({', '.join(kept)}) that one data.yaml "
                        f"cannot list with --mode {mode} ones; convert those splits too, or use another --out")
    return kept


def _coco_is_ours(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return json.dumps({"description": MADE_BY})[1:-1].encode() in head


def yolo_data_yaml(out: Path, mode: str, splits: Iterable[str]) -> str:
    """data.yaml naming ``splits`` (this run's and earlier conversions' into ``out``); its first line
    records that data convert wrote it, and which splits are its own."""
    splits = sorted(set(splits))
    lines = [f"# {MADE_BY} --mode {mode}: splits {' '.join(splits)}", f"path: {json.dumps(str(out.resolve()))}"]
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
    for split in names:
        why = unsafe_name(split)
        if why:
            raise DataError(f"--split {split!r}: {why}")
    kept = _check_out(out, to, mode, names)
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
            # Claimed in data.yaml before its folders appear, so an interrupted run's folders are still ours.
            done = [s for s in loaded if (out / "images" / s).is_dir() or s == split]
            write_text_atomic(out / "data.yaml", yolo_data_yaml(out, mode, [*kept, *done]))
            write_yolo_split(root, out, split, samples, mode, progress)
            written += [out / "images" / split, out / "labels" / split]
    if to == "yolo":
        written.append(out / "data.yaml")
    return written
