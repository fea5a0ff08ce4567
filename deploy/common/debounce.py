"""Gesture events from per-frame labels: a gesture starts after N of the last M frames show it and
ends after K frames in a row without it (or when its hand's track is lost).

One ``Debouncer`` per track; frames where the track is not seen count as "without".
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.labels import NO_GESTURE


@dataclass(frozen=True)
class DebounceConfig:
    n: int = 3  # frames that must show the gesture ...
    m: int = 5  # ... among the last M
    k: int = 5  # frames without it that end it

    def __post_init__(self) -> None:
        if not (1 <= self.n <= self.m):
            raise HagridEdgeError(f"--debounce-n {self.n} / --debounce-m {self.m}: need 1 <= N <= M")
        if self.k < 1:
            raise HagridEdgeError(f"--debounce-k {self.k}: need K >= 1")


@dataclass
class GestureEvent:
    kind: str  # "start" or "end"
    gesture: str
    track: int
    frame: int
    time: float
    score: float
    box: list[float]
    hand: dict | None = None  # more about the hand in that frame, e.g. its landmarks

    def to_dict(self) -> dict:
        return {"event": self.kind, "gesture": self.gesture, "track": self.track, "frame": self.frame,
                "time": round(self.time, 3), "score": round(self.score, 4),
                "box": [round(v, 1) for v in self.box], **(self.hand or {})}


class Debouncer:
    """The temporal state of one track."""

    def __init__(self, track: int, config: DebounceConfig) -> None:
        self.track, self.config = track, config
        self.history: collections.deque[str | None] = collections.deque(maxlen=config.m)
        self.active: str | None = None
        self.absent = 0  # frames in a row without the active gesture
        self.last_score, self.last_box = 0.0, [0.0, 0.0, 0.0, 0.0]
        self.last_hand: dict | None = None

    def update(self, label: str | None, score: float, box: np.ndarray | None, frame: int,
               now: float, hand: dict | None = None) -> list[GestureEvent]:
        """Feed one frame (``label`` None: the track was not seen); the events it causes."""
        label = None if label == NO_GESTURE else label
        self.history.append(label)
        if label is not None and box is not None:
            self.last_box, self.last_hand = [float(v) for v in box], hand
            if label == self.active or self.active is None:
                self.last_score = score
        events: list[GestureEvent] = []
        if self.active is not None:
            self.absent = 0 if label == self.active else self.absent + 1
            if self.absent >= self.config.k:
                events.append(self._event("end", self.active, frame, now))
                self.active = None
        if label is not None and label != self.active and self.history.count(label) >= self.config.n:
            if self.active is not None:
                events.append(self._event("end", self.active, frame, now))
            self.active, self.absent, self.last_score = label, 0, score
            events.append(self._event("start", label, frame, now))
        return events

    def finish(self, frame: int, now: float) -> list[GestureEvent]:
        """End the active gesture (track lost or stream over)."""
        if self.active is None:
            return []
        event = self._event("end", self.active, frame, now)
        self.active = None
        return [event]

    def _event(self, kind: str, gesture: str, frame: int, now: float) -> GestureEvent:
        return GestureEvent(kind, gesture, self.track, frame, now, self.last_score, self.last_box, self.last_hand)
