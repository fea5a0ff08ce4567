"""Which photos calibrate, which choose the float layers, and which report: three disjoint sets.

- calibration: the subsample (HaGRID's calibration pool), activation ranges only;
- tune: half of the train photos outside the subsample; the guard chooses float layers on these;
- report: the other half of those train photos plus every val photo; nothing is chosen on them.

The halves are cut by a hash of the user id (of the image id where the user is unknown), so no
person is in both and the cut is the same on every machine. Without a train split, val is cut in
two the same way. Val keeps the authors' boxes, so the report's labelled figures come from there.

A model trained on this data's train split (its spec's training config says so) has seen every
train photo: INT8 error on its own training photos does not look like it does on new people (the
one-stage gesture detector scored 83 mAP50-95 on them against 52 on val), so its guard tunes on
half of the val users and reports on the other half, and no train photo is used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from hagrid_edge.data.annotations import Sample, available_splits, load_split
from hagrid_edge.errors import DataError
from hagrid_edge.quantize.calib_data import SPLIT as CALIBRATION_SPLIT

TUNE, REPORT = "tune", "report"


@dataclass
class PhotoSet:
    name: str
    samples: list[Sample]
    sources: str  # where the photos come from, for the report
    labelled: set[str] | None = None  # image ids scored against annotations (None: every photo)

    def labelled_samples(self) -> list[Sample]:
        return self.samples if self.labelled is None else [s for s in self.samples if s.image_id in self.labelled]

    def describe(self) -> dict:
        return {"name": self.name, "images": len(self.samples), "sources": self.sources,
                "labelled_images": len(self.labelled_samples())}


def _half(sample: Sample) -> str:
    key = sample.user_id or sample.image_id
    return TUNE if hashlib.sha1(key.encode()).digest()[0] % 2 == 0 else REPORT


def _spread(samples: list[Sample], limit: int | None) -> list[Sample]:
    """At most ``limit`` samples, taken evenly across the list (which is grouped by gesture)."""
    if limit is None or len(samples) <= limit:
        return samples
    step = len(samples) / limit
    return [samples[int(k * step)] for k in range(limit)]


def trained_on(provenance: dict, root: str | Path) -> str | None:
    """The split of ``root`` a model trained on, from its spec's training config (None: not trained here,
    or not said). Data roots are matched by folder name, as configs name them relative to a checkout."""
    data = (provenance.get("config") or {}).get("data") or {}
    if not data.get("root") or not data.get("train_split"):
        return None
    return data["train_split"] if Path(data["root"]).name == Path(root).resolve().name else None


def photo_sets(root: str | Path, limit: int | None = None, trained: bool = False) -> tuple[PhotoSet, PhotoSet]:
    """(tune, report) photo sets of ``root``, disjoint from each other and from the calibration photos.

    ``limit`` caps each set (spread across gestures), for quick runs. ``trained``: a model being guarded
    trained on the train split (``trained_on``), so val's users are cut in two instead.
    """
    root = Path(root)
    splits = available_splits(root) if root.is_dir() else []
    calib = {s.image_id for s in load_split(root, CALIBRATION_SPLIT)} if CALIBRATION_SPLIT in splits else set()
    val = [s for s in load_split(root, "val") if s.image_id not in calib] if "val" in splits else []
    if "train" in splits and not trained:
        pool = [s for s in load_split(root, "train") if s.image_id not in calib]
        tune = [s for s in pool if _half(s) == TUNE]
        report = [s for s in pool if _half(s) == REPORT]
        tune_src = (f"train split of {root.name}: the half of its users hashed to tune, subsample photos "
                    "excluded; mAP against its annotations")
        report_src = (f"val split of {root.name} (the authors' boxes: mAP against annotations) "
                      "+ the other half of the train users (subsample excluded): agreement on all")
        report = val + report
        labelled: set[str] | None = {s.image_id for s in val}
    else:
        tune = [s for s in val if _half(s) == TUNE]
        report = [s for s in val if _half(s) == REPORT]
        why = " (the model trained on the train split, so no train photo is used)" if trained else ""
        tune_src = f"val split of {root.name}: the half of its users hashed to tune{why}"
        report_src = f"val split of {root.name}: the other half of its users{why}"
        labelled = None
    if not tune or not report:
        raise DataError(f"{root}: too few photos outside the calibration subsample to hold some apart "
                        f"(tune {len(tune)}, report {len(report)}); the guard needs a train or val split")
    return (PhotoSet(TUNE, _spread(tune, limit), tune_src),
            PhotoSet(REPORT, _spread(report, limit), report_src, labelled))
