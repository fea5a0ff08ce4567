"""User-disjoint train/val splitting of HaGRID samples.

HaGRID's authors split by subject (``user_id``) so that no person appears on both sides; a
derived split must do the same or validation scores measure memorised faces and rooms. Each
user goes to val when a hash of (seed, user) falls under ``val_fraction``: deterministic across
runs and machines, and a user's side does not change when other users are added or removed.
An entry whose ``user_id`` is null is its own group (keyed by its image id): nothing ties it to
any other image, so it cannot leak, but it is placed independently of every other entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from hagrid_edge.data.annotations import Sample

    S = TypeVar("S", bound=Sample)

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SEED = 0


def group_key(sample: Sample) -> str:
    """The unit a split may not cut: the user, or the image itself when the user is unknown."""
    return f"user:{sample.user_id}" if sample.user_id is not None else f"image:{sample.image_id}"


def in_val(key: str, val_fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split_by_user(samples: Sequence[S], val_fraction: float = DEFAULT_VAL_FRACTION,
                  seed: int = DEFAULT_SEED) -> tuple[list[S], list[S]]:
    """(train, val): every group wholly on one side, about ``val_fraction`` of the groups in val."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction {val_fraction} is not within [0, 1]")
    train: list[S] = []
    val: list[S] = []
    side: dict[str, bool] = {}
    for s in samples:
        key = group_key(s)
        if key not in side:
            side[key] = in_val(key, val_fraction, seed)
        (val if side[key] else train).append(s)
    return train, val


def shared_users(*splits: Iterable[Sample]) -> set[str]:
    """Known users present in more than one of ``splits`` (empty for a user-disjoint split)."""
    seen: dict[str, int] = {}
    for index, split in enumerate(splits):
        for s in split:
            if s.user_id is not None and seen.setdefault(s.user_id, index) != index:
                seen[s.user_id] = -1
    return {u for u, i in seen.items() if i == -1}
