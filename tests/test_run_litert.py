"""The LiteRT adapter for real: MediaPipe's palm detector (.tflite, float32, NHWC) on HaGRID photos.

The palm detector decodes boxes with MediaPipe's own anchor scheme, which the spec's SSD decoding
does not describe, so it is run at the backend level: the spec below states its real I/O (NHWC
192x192, RGB in [0, 1], tensors ``Identity`` / ``Identity_1``) and the shared preprocessing feeds it.
The `.tflite` hand detector / crop classifier shipped in ``assets/models/`` (the quantize stage's
export) run end to end through ``hagrid-edge run`` when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import missing
from test_run_cli import HOLD, SEQUENCE, letterboxed, make_video, read_events

from hagrid_edge.cli import main
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.landmarks import is_landmark_spec
from hagrid_edge.paths import DEFAULT_MODELS
from hagrid_edge.processing import preprocess, sigmoid
from hagrid_edge.spec import ModelSpec, resolve_spec


def palm_anchors(size: int = 192) -> np.ndarray:
    """MediaPipe palm-detection anchors (strides 8, 16, 16, 16; two per cell; fixed size) in input pixels."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = size // stride
        for y in range(cells):
            for x in range(cells):
                out += [[(x + 0.5) * stride, (y + 0.5) * stride, size, size]] * per_cell
    return np.asarray(out, np.float32)


def palm_spec(**changes: object) -> ModelSpec:
    d = {"task": "detector", "classes": ["palm"], "input_size": [192, 192], "input_name": "input_1",
         "layout": "NHWC", "resize": "letterbox", "pad_value": 0, "mean": [0, 0, 0], "std": [255, 255, 255],
         "outputs": "ssd_raw", "output_names": {"bbox_regression": "Identity", "cls_logits": "Identity_1"},
         "score_activation": "sigmoid", "background_class": False, "priors": palm_anchors(),
         "provenance": {"source": "mediapipe 0.10.21 wheel"}}
    return ModelSpec(**{**d, **changes})


@pytest.fixture(scope="module")
def palm_model(mediapipe_dir: Path) -> Path:
    return mediapipe_dir / "palm_detection_lite.tflite"


def test_palm_detector_runs_on_hagrid_photos(palm_model: Path, mini_root: Path) -> None:
    backend = open_backend(palm_model, spec=palm_spec(), threads=2)
    assert backend.name == "litert-cpu" and backend.max_batch == 1
    best = []
    for gesture, image_id in SEQUENCE:
        x, _ = preprocess(letterboxed(mini_root, gesture, image_id)[:, :, ::-1].copy(), backend.spec)
        out = backend.infer(x)
        assert out["Identity"].shape == (1, 2016, 18) and out["Identity_1"].shape == (1, 2016, 1)
        best.append(float(sigmoid(out["Identity_1"]).max()))
    empty, _ = preprocess(np.zeros((480, 640, 3), np.uint8), backend.spec)
    # a hand in every photo, none in a black frame: the runtime is fed and read correctly
    assert min(best) > 0.5 > float(sigmoid(backend.infer(empty)["Identity_1"]).max())


def test_spec_not_matching_the_model_is_refused(palm_model: Path, tmp_path: Path) -> None:
    with pytest.raises(HagridEdgeError, match=r"input 'image' is not a model input \['input_1'\]"):
        open_backend(palm_model, spec=palm_spec(input_name="image"))
    names = {"bbox_regression": "Identity", "cls_logits": "scores"}
    with pytest.raises(HagridEdgeError, match=r"outputs \['scores'\] the model lacks"):
        open_backend(palm_model, spec=palm_spec(output_names=names))
    backend = open_backend(palm_model, spec=palm_spec())
    with pytest.raises(HagridEdgeError, match="input is float32, got uint8"):
        backend.infer(np.zeros((1, 192, 192, 3), np.uint8))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"TFL3" + bytes(512))
    with pytest.raises(HagridEdgeError, match="LiteRT cannot load it"):
        open_backend(junk, spec=palm_spec())


def _shipped_tflite(folder: Path = DEFAULT_MODELS) -> list[tuple[str, Path, str | None]]:
    """(task, path, error) of every .tflite shipped beside the default models that is a stage of the two-stage
    pipeline (a hand detector or a crop classifier); a file whose spec cannot be read is kept with its error,
    so it fails its test instead of vanishing from the list."""
    found = []
    for path in sorted(folder.glob("*.tflite")):
        try:
            spec = resolve_spec(path)
        except HagridEdgeError as e:
            found.append(("unreadable", path, str(e)))
            continue
        if spec.task == "detector" or (spec.crop is not None and not is_landmark_spec(spec)):
            found.append((spec.task, path, None))
    return found


def test_an_unreadable_shipped_tflite_stays_in_the_list(tmp_path: Path) -> None:
    """A .tflite whose spec cannot be read is listed with its error (its test fails), not dropped."""
    (tmp_path / "broken.tflite").write_bytes(b"TFL3" + bytes(64))
    ((task, path, error),) = _shipped_tflite(tmp_path)
    assert (task, path.name) == ("unreadable", "broken.tflite") and "broken.tflite" in error


def run_two_stage(detector: Path, classifier: Path, mini_root: Path, tmp_path: Path) -> None:
    """The gesture video through ``hagrid-edge run``: events name the gestures in the order shown."""
    video = tmp_path / "v.mp4"
    make_video(mini_root, video)
    rc = main(["run", "--engine", str(detector), "--classifier", str(classifier), "--source", str(video),
               "--headless", "--threads", "2", "--events", str(tmp_path / "ev.jsonl"),
               "--summary", str(tmp_path / "s.json")])
    assert rc == 0
    starts = [e["gesture"] for e in read_events(tmp_path / "ev.jsonl") if e["event"] == "start"]
    assert starts == [g for g, _ in SEQUENCE]
    assert json.loads((tmp_path / "s.json").read_text())["frames"] == len(SEQUENCE) * HOLD


@pytest.mark.parametrize("shipped", _shipped_tflite() or [None], ids=lambda t: t[1].name if t else "none")
def test_run_with_shipped_tflite(shipped: tuple[str, Path, str | None] | None, hand_detector: Path,
                                 crop_classifier: Path, mini_root: Path, tmp_path: Path) -> None:
    """A shipped .tflite takes its stage's place in the authors' two-stage pipeline."""
    if shipped is None:
        missing(f"no .tflite hand detector or crop classifier in {DEFAULT_MODELS} (the quantize stage exports them)")
    task, path, error = shipped
    assert error is None, f"{path.name}: shipped, but its spec cannot be read: {error}"
    if task == "detector":
        run_two_stage(path, crop_classifier, mini_root, tmp_path)
    else:
        run_two_stage(hand_detector, path, mini_root, tmp_path)
