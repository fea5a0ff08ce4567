"""Hand landmarks: MediaPipe's hand landmark model on each hand box, 21 points back in frame pixels.

The model (``hand_landmark_{lite,full}.tflite``, Apache-2.0) takes a square RGB crop of one hand,
224x224, values in [0, 1], and returns 21 (x, y, z) points in crop-input pixels and a hand-presence
probability. Its ``ModelSpec`` task is ``landmarks``: a hand crop in, the presence output (role
``logits``, one class ``hand``) and the 21-point head (role ``points``) out. Input geometry,
normalisation, crop and output quantization go through the shared helpers of
``hagrid_edge.processing`` as for the crop classifier; only the point mapping lives here. A
landmark model is no classifier: the detection pipeline refuses it as one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hagrid_edge.data.annotations import LANDMARK_POINTS
from hagrid_edge.deploy.common.backend import BACKENDS, Backend, open_backend
from hagrid_edge.errors import HagridEdgeError, SpecError
from hagrid_edge.paths import DEFAULT_MODELS
from hagrid_edge.pipeline import StageTimes
from hagrid_edge.processing import Geometry, crop_box, output, resize_frame, to_tensor
from hagrid_edge.spec import ModelSpec, resolve_spec, sha256_file

DEFAULT_LANDMARKS = DEFAULT_MODELS / "hand_landmark_lite.tflite"
POINTS_ROLE = "points"
# MediaPipe's hand skeleton: wrist 0; thumb 1-4, index 5-8, middle 9-12, ring 13-16, little 17-20.
BONES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10), (10, 11), (11, 12),
         (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17), (17, 18), (18, 19), (19, 20))
# The hand box grown by this factor about its centre (to a square) is the crop: with HaGRID's tight
# boxes 1.3 gave the highest mean presence (lite model, the first 60 hagrid512-mini val photos, their
# annotated boxes: 1.0: 0.68, 1.3: 0.72, 1.6: 0.67, 2.0: 0.51).
CROP_EXPAND = 1.3


def _mediapipe_spec(file: str) -> dict:
    return {
        "task": "landmarks", "classes": ["hand"], "input_size": [224, 224], "input_name": "input_1",
        "layout": "NHWC", "resize": "letterbox", "pad_value": 0, "mean": [0.0, 0.0, 0.0],
        "std": [255.0, 255.0, 255.0], "outputs": "logits",
        "output_names": {"logits": "Identity_1", POINTS_ROLE: "Identity"},
        "score_activation": "none",  # the presence output is already a probability
        "score_threshold": 0.5, "crop": {"kind": "square", "expand": CROP_EXPAND},
        "provenance": {"source": "MediaPipe Hands, mediapipe 0.10.21 wheel", "license": "Apache-2.0",
                       "file": file},
    }


# MediaPipe's landmark models by the sha256 of their file (the registry hook: hagrid_edge.registry).
KNOWN_LANDMARK_MODELS: dict[str, dict] = {
    "048edd3645c9bf7397d19a9f6e3a42957d6e414c9bea6598030a2e9b624156e6": _mediapipe_spec("hand_landmark_lite.tflite"),
    "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3": _mediapipe_spec("hand_landmark_full.tflite"),
}


def is_landmark_spec(spec: ModelSpec) -> bool:
    return spec.task == "landmarks"  # validation made sure it has points and a crop


def find_landmark_spec(path: str | Path, spec_file: str | Path | None = None) -> ModelSpec | None:
    """The spec of ``path`` if it is a hand landmark model, else None.

    Resolved as for any artifact (``spec_file``, sidecar, embedded, registry), then by the sha256
    of MediaPipe's own files. A format no backend runs is left to ``open_backend`` to refuse.
    """
    if Path(path).suffix.lower() not in BACKENDS:
        return None
    try:
        spec = resolve_spec(path, spec_file)
    except SpecError:
        entry = KNOWN_LANDMARK_MODELS.get(sha256_file(path)) if Path(path).is_file() else None
        if entry is None:
            raise
        spec = ModelSpec.from_dict(entry, f"{path} (known landmark model)")
    return spec if is_landmark_spec(spec) else None


def landmark_spec(path: str | Path, spec_file: str | Path | None = None) -> ModelSpec:
    spec = find_landmark_spec(path, spec_file)
    if spec is None:
        raise HagridEdgeError(f"{path}: not a hand landmark model (its spec's task is not 'landmarks'; "
                              "MediaPipe's hand_landmark_lite/full.tflite are known)")
    return spec


@dataclass
class HandLandmarks:
    """Per hand: 21 (x, y) points in frame pixels and the model's hand-presence probability."""

    points: np.ndarray  # (N, 21, 2) float32
    presence: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.presence)

    def hand(self, index: int) -> dict:
        """One hand as JSON-ready values (points rounded to 0.1 px)."""
        return {"landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.points[index]],
                "presence": round(float(self.presence[index]), 4)}


def hand_input(frame: np.ndarray, box: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, Geometry, tuple[int, int]]:
    """The model input for one hand box (the spec's square crop, resized and normalised), its geometry and
    the crop's top-left corner in the frame: what the landmarker runs, and what INT8 calibration reads."""
    x1, y1, x2, y2 = crop_box(box, frame.shape[1], frame.shape[0], spec.crop)
    image, geo = resize_frame(frame[y1:y2, x1:x2], spec)
    return to_tensor(image[None], spec), geo, (x1, y1)


def _to_frame(points: np.ndarray, geo: Geometry, corner: tuple[int, int]) -> np.ndarray:
    """Crop-input pixels -> frame pixels (undo the resize, then the crop offset)."""
    x = (points[:, 0] - geo.pad_x) / geo.scale_x + corner[0]
    y = (points[:, 1] - geo.pad_y) / geo.scale_y + corner[1]
    return np.stack([x, y], axis=1).astype(np.float32)


class Landmarker:
    """A hand landmark artifact: frame + hand boxes -> ``HandLandmarks``, one model call per hand."""

    def __init__(self, backend: Backend) -> None:
        if not is_landmark_spec(backend.spec):
            raise HagridEdgeError(f"{backend.path}: not a hand landmark model")
        self.backend, self.spec = backend, backend.spec
        self.last_times = StageTimes()

    def __call__(self, frame: np.ndarray, boxes: np.ndarray) -> HandLandmarks:
        pre = infer = post = 0.0
        points, presence = [], []
        for box in np.asarray(boxes, np.float32).reshape(-1, 4):
            t0 = time.perf_counter()
            x, geo, corner = hand_input(frame, box, self.spec)
            t1 = time.perf_counter()
            out = self.backend.infer(x)
            t2 = time.perf_counter()
            xyz = output(out, self.spec, POINTS_ROLE).reshape(LANDMARK_POINTS, -1)
            points.append(_to_frame(xyz[:, :2], geo, corner))
            presence.append(float(output(out, self.spec, "logits").reshape(-1)[0]))
            t3 = time.perf_counter()
            pre, infer, post = pre + t1 - t0, infer + t2 - t1, post + t3 - t2
        self.last_times = StageTimes(pre, infer, post)
        return HandLandmarks(np.asarray(points, np.float32).reshape(-1, LANDMARK_POINTS, 2),
                             np.asarray(presence, np.float32))


def open_landmarker(path: str | Path = DEFAULT_LANDMARKS, spec_file: str | Path | None = None,
                    threads: int | None = None) -> Landmarker:
    path = Path(path)
    return Landmarker(open_backend(path, spec=landmark_spec(path, spec_file), threads=threads))


def point_errors(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per hand, the mean distance (pixels) between matching points of (N, 21, 2) arrays."""
    return np.linalg.norm(np.asarray(pred, np.float32) - np.asarray(target, np.float32), axis=-1).mean(axis=-1)
