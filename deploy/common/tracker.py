"""An IoU tracker: the same hand keeps its id from frame to frame while its box overlaps.

Greedy matching by decreasing IoU (enough for the few hands in a frame); a track that goes
unmatched for more than ``max_age`` frames is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hagrid_edge.processing import box_iou


@dataclass
class Track:
    id: int
    box: np.ndarray  # xyxy frame pixels, last matched
    missed: int = 0  # frames since the last match


class IouTracker:
    def __init__(self, iou_threshold: float = 0.3, max_age: int = 5) -> None:
        self.iou_threshold, self.max_age = iou_threshold, max_age
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> tuple[list[int], list[Track]]:
        """Match this frame's boxes; returns the track id of each box and the tracks just dropped."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        ids = [0] * len(boxes)
        matched_tracks: set[int] = set()
        if self.tracks and len(boxes):
            iou = box_iou(boxes, np.stack([t.box for t in self.tracks]))
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                b, t = divmod(int(flat), iou.shape[1])
                if iou[b, t] < self.iou_threshold:
                    break
                if ids[b] or t in matched_tracks:
                    continue
                ids[b] = self.tracks[t].id
                matched_tracks.add(t)
                self.tracks[t].box, self.tracks[t].missed = boxes[b], 0
        for i, track in enumerate(self.tracks):
            if i not in matched_tracks:
                track.missed += 1
        for b in range(len(boxes)):
            if not ids[b]:
                self.tracks.append(Track(self._next_id, boxes[b]))
                ids[b] = self._next_id
                self._next_id += 1
        dropped = [t for t in self.tracks if t.missed > self.max_age]
        self.tracks = [t for t in self.tracks if t.missed <= self.max_age]
        return ids, dropped
