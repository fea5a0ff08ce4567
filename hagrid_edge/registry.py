"""Third-party models known by the sha256 of their file, so they run with no spec beside them."""

from __future__ import annotations

from hagrid_edge.labels import GESTURES
from hagrid_edge.spec import ModelSpec

# The HaGRID authors' crop classifier (dynamic-gestures project): its 45 classes in output order.
_CROP_CLASSES = (
    "hand_down hand_right hand_left thumb_index thumb_left thumb_right thumb_down half_up half_left "
    "half_right half_down part_hand_heart part_hand_heart2 fist_inverted two_left two_right two_down "
    "grabbing grip point call three3 little_finger middle_finger dislike fist four like mute ok one "
    "palm peace peace_inverted rock stop stop_inverted three three2 two_up two_up_inverted three_gun "
    "one_left one_right one_down"
).split()

_AUTHORS = {"source": "HaGRID authors, dynamic-gestures project", "license": "Apache-2.0"}

KNOWN_MODELS: dict[str, dict] = {
    # hand_detector.onnx: SSD-style hand detector with NMS in the graph; batch 1.
    "a8ef73d466b61a8e8677be9c47008b217a11d1b265d95e36bf2521ff93329af6": {
        "task": "detector",
        "classes": ["hand"],
        "input_size": [240, 320],
        "input_name": "input",
        "resize": "stretch",
        "mean": [127.0, 127.0, 127.0],
        "std": [128.0, 128.0, 128.0],
        "outputs": "nms",
        "output_names": {"boxes": "boxes", "scores": "scores", "labels": "labels"},
        "box_units": "normalized",
        "background_class": True,
        "score_threshold": 0.5,
        "provenance": {**_AUTHORS, "file": "hand_detector.onnx"},
    },
    # crops_classifier.onnx: square hand crop, 128x128, 45 logits.
    "12a02344f63a7c4f2a2ca90f8740ca10a08c17b683b5585d73c3e88323056762": {
        "task": "classifier",
        "classes": list(_CROP_CLASSES),
        "input_size": [128, 128],
        "input_name": "input",
        "resize": "stretch",
        "mean": [127.0, 127.0, 127.0],
        "std": [128.0, 128.0, 128.0],
        "outputs": "logits",
        "output_names": {"logits": "labels"},
        "score_activation": "softmax",
        "crop": {"kind": "square", "expand": 1.0},
        "class_map": {c: c for c in _CROP_CLASSES if c in GESTURES},
        "score_threshold": 0.0,
        "provenance": {**_AUTHORS, "file": "crops_classifier.onnx"},
    },
}


def lookup(sha256: str) -> ModelSpec | None:
    entry = KNOWN_MODELS.get(sha256)
    if entry is None:
        return None
    spec = ModelSpec.from_dict(entry, f"registry entry {sha256[:12]}")
    spec.provenance = {**spec.provenance, "sha256": sha256}
    return spec
