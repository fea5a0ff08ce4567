"""HaGRID label vocabularies."""

from __future__ import annotations

# HaGRID's 18 gestures (HaGRID 1.0 and the 512-px 2.0 release used here).
GESTURES: tuple[str, ...] = (
    "call", "dislike", "fist", "four", "like", "mute", "ok", "one", "palm", "peace",
    "peace_inverted", "rock", "stop", "stop_inverted", "three", "three2", "two_up", "two_up_inverted",
)
# The label of a hand that shows none of the dataset's gestures.
NO_GESTURE = "no_gesture"
# Detector classes in the gesture task: every gesture, then no_gesture.
DETECTOR_CLASSES: tuple[str, ...] = (*GESTURES, NO_GESTURE)
HAND = "hand"
# HaGRIDv2 added 15 gestures to the 18 (33 in all).
V2_EXTRA_GESTURES: tuple[str, ...] = (
    "grabbing", "grip", "hand_heart", "hand_heart2", "holy", "little_finger", "middle_finger", "point",
    "take_picture", "three_gun", "three3", "thumb_index", "thumb_index2", "timeout", "xsign",
)
KNOWN_LABELS: frozenset[str] = frozenset((*GESTURES, *V2_EXTRA_GESTURES, NO_GESTURE))
LEADING_HANDS: tuple[str, ...] = ("left", "right")
