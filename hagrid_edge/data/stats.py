"""``data stats``: images, boxes and users per split and per class of a HaGRID root."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hagrid_edge.data.annotations import Sample, load_split, resolve_splits


def split_stats(samples: Sequence[Sample]) -> dict[str, Any]:
    """Totals of one split, and per class: images (entries of that gesture's file), boxes with that
    label, and distinct known users. ``unknown_user_images`` counts entries whose user_id is null."""
    images: Counter[str] = Counter()
    boxes: Counter[str] = Counter()
    users: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        images[s.gesture] += 1
        boxes.update(s.labels)
        if s.user_id is not None:
            users[s.gesture].add(s.user_id)
            for label in s.labels:
                users[label].add(s.user_id)
    classes = sorted(set(images) | set(boxes))
    return {
        "images": len(samples),
        "boxes": sum(boxes.values()),
        "users": len({s.user_id for s in samples if s.user_id is not None}),
        "unknown_user_images": sum(s.user_id is None for s in samples),
        "classes": {c: {"images": images[c], "boxes": boxes[c], "users": len(users[c])} for c in classes},
    }


def root_stats(root: str | Path, splits: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``split_stats`` of every split (or of ``splits``) under ``root``; malformed data raises DataError."""
    root, names = resolve_splits(root, splits)
    return {split: split_stats(load_split(root, split)) for split in names}


def format_stats(stats: dict[str, dict[str, Any]]) -> str:
    """A plain-text table per split."""
    lines = []
    for split, st in stats.items():
        lines.append(f"{split}: {st['images']} images, {st['boxes']} boxes, {st['users']} users"
                     f" ({st['unknown_user_images']} images without user_id)")
        lines.append(f"  {'class':18s} {'images':>8s} {'boxes':>8s} {'users':>8s}")
        for name, c in st["classes"].items():
            lines.append(f"  {name:18s} {c['images']:8d} {c['boxes']:8d} {c['users']:8d}")
    return "\n".join(lines)
