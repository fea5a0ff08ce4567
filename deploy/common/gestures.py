"""Detections of each frame -> gesture events: the IoU tracker plus one debouncer per track."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hagrid_edge.deploy.common.debounce import DebounceConfig, Debouncer, GestureEvent
from hagrid_edge.deploy.common.tracker import IouTracker
from hagrid_edge.processing import Detections, nms


def one_per_hand(dets: Detections, iou: float) -> Detections:
    """One detection per hand: of boxes that overlap by more than ``iou``, whatever their gestures, the likeliest.

    A gesture detector's NMS is per gesture (COCO mAP credits a second, less likely gesture on an ambiguous
    hand, so evaluation keeps it), and a run would track that second box as another hand with its own
    events. The shipped one-stage detector left such a pair at its operating threshold on 31 of 469
    hagrid512-mini photos (val and every fourth train photo)."""
    if len(dets) < 2:
        return dets
    return dets.take(np.sort(nms(dets.boxes, dets.scores, iou)))


class Gestures:
    """Keeps each hand's id from frame to frame and turns its per-frame labels into start/end events."""

    def __init__(self, debounce: DebounceConfig, track_iou: float = 0.3, track_max_age: int = 5) -> None:
        self.tracker = IouTracker(track_iou, track_max_age)
        self.config = debounce
        self.debouncers: dict[int, Debouncer] = {}

    def update(self, dets: Detections, frame: int, now: float,
               hands: Sequence[dict] | None = None) -> tuple[list[int], list[GestureEvent]]:
        """Track ids of this frame's detections and the events they cause (``hands``: per-detection extras)."""
        ids, lost = self.tracker.update(dets.boxes)
        events: list[GestureEvent] = []
        seen = {track_id: i for i, track_id in enumerate(ids)}
        for track in self.tracker.tracks:
            deb = self.debouncers.setdefault(track.id, Debouncer(track.id, self.config))
            i = seen.get(track.id)
            if i is None:
                events += deb.update(None, 0.0, None, frame, now)
            else:
                events += deb.update(dets.labels[i], float(dets.scores[i]), dets.boxes[i], frame, now,
                                     hands[i] if hands is not None else None)
        for track in lost:
            deb = self.debouncers.pop(track.id, None)
            if deb is not None:
                events += deb.finish(frame, now)
        return ids, events

    def finish(self, frame: int, now: float) -> list[GestureEvent]:
        """End every open gesture (the source ended or the run stops)."""
        events = [e for deb in self.debouncers.values() for e in deb.finish(frame, now)]
        self.debouncers.clear()
        return events
