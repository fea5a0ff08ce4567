"""Calibration inputs: HaGRID subsample images through the spec's own preprocessing.

The subsample is HaGRID's calibration pool (official ``subsample/`` + ``ann_subsample/``, or
``annotations/subsample/`` as in hagrid512-mini). Every image goes through
``hagrid_edge.processing`` exactly as at inference: ``preprocess`` for detectors and full-frame
classifiers, ``crop_inputs`` on the annotated hands for hand-crop classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

import numpy as np

from hagrid_edge.data.annotations import Problem, Sample, available_splits, load_split
from hagrid_edge.errors import DataError
from hagrid_edge.images import read_rgb
from hagrid_edge.processing import crop_inputs, preprocess
from hagrid_edge.spec import ModelSpec

SPLIT = "subsample"


@dataclass
class CalibStats:
    """How many subsample images fed the calibration, and which were skipped (unreadable)."""

    used: int = 0
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    bad_entries: int = 0  # annotation entries that failed to parse
    inputs: int = 0  # batch-1 inputs produced (one per image, or one per hand for crop classifiers)


def subsample(data_root: str | Path, limit: int | None = None) -> tuple[list[Sample], int]:
    """The subsample's entries, interleaved across gestures (so ``limit`` still covers every gesture),
    and the number of annotation entries skipped as malformed."""
    root = Path(data_root)
    if root.is_dir() and SPLIT not in available_splits(root):
        raise DataError(f"{root}: no HaGRID subsample (expected annotations/subsample/ or ann_subsample/); "
                        "pass --data with a root that has one")
    problems: list[Problem] = []
    samples = load_split(root, SPLIT, problems=problems)
    by_gesture: dict[str, list[Sample]] = {}
    for s in samples:
        by_gesture.setdefault(s.gesture, []).append(s)
    mixed = [s for group in zip_longest(*by_gesture.values()) for s in group if s is not None]
    if limit is not None:
        if limit <= 0:
            raise DataError(f"--limit must be positive, got {limit}")
        mixed = mixed[:limit]
    if not mixed:
        raise DataError(f"{root}: the subsample has no usable entries ({len(problems)} malformed)")
    return mixed, len(problems)


def calibration_batches(data_root: str | Path, spec: ModelSpec, limit: int | None = None
                        ) -> tuple[list[np.ndarray], CalibStats]:
    """Batch-1 model inputs (exactly as inference builds them) from the subsample of ``data_root``.

    Unreadable images are skipped and counted in the returned ``CalibStats``; it is an error only
    when none can be read (or the subsample is missing or empty).
    """
    samples, bad = subsample(data_root, limit)
    stats = CalibStats(bad_entries=bad)
    inputs: list[np.ndarray] = []
    for s in samples:
        try:
            frame = read_rgb(s.image_path)
        except DataError:
            stats.skipped += 1
            stats.skipped_files.append(str(s.image_path))
            continue
        stats.used += 1
        if spec.task == "classifier" and spec.crop is not None:
            crops = crop_inputs(frame, s.boxes_xyxy(frame.shape[1], frame.shape[0]), spec)
            inputs += [crops[i:i + 1] for i in range(len(crops))]
        else:
            inputs.append(preprocess(frame, spec)[0])
    if not stats.used:
        raise DataError(f"{data_root}: none of the {len(samples)} subsample images could be read "
                        f"(first: {stats.skipped_files[0]})")
    if not inputs:
        raise DataError(f"{data_root}: the subsample images gave no calibration inputs (no annotated hands)")
    stats.inputs = len(inputs)
    return inputs, stats
