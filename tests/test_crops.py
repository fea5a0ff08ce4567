"""Hand-crop training data: crop folders with bad files, photo boxes, and the crop the pipeline cuts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hagrid_edge.data.annotations import load_split
from hagrid_edge.data.crops import CropDataset, folder_crops, photo_crops
from hagrid_edge.errors import DataError
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import DETECTOR_CLASSES
from hagrid_edge.models import model_spec, onnx_model
from hagrid_edge.processing import crop_box, crop_inputs, to_tensor


@pytest.fixture(scope="module")
def box_spec(crop_classifier):
    model, cfg, _ = onnx_model("onnx_classifier", crop_classifier, list(DETECTOR_CLASSES), crop="box")
    return model_spec(cfg, model)


def test_unreadable_crops_are_skipped_and_counted(crops_root, tmp_path):
    root = tmp_path / "crops"
    for part, cls in (("boxed", "like"), ("boxed", "fist"), ("selected", "none")):
        src = crops_root / part / cls
        (root / part / cls).mkdir(parents=True)
        for f in sorted(src.iterdir())[:5]:
            shutil.copy(f, root / part / cls / f.name)
    (root / "boxed" / "like" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    good = read_rgb(next((root / "boxed" / "fist").iterdir()))
    truncated = root / "boxed" / "fist" / "truncated.jpg"
    truncated.write_bytes((next((root / "boxed" / "fist").iterdir())).read_bytes()[:200])
    found = folder_crops(root, DETECTOR_CLASSES)
    assert len(found.samples) == 10 and good.ndim == 3
    assert sorted(p.name for p in found.unreadable) == ["broken.jpg", "truncated.jpg"]
    assert found.unknown_classes == ["none"]
    assert "2 unreadable images skipped" in found.summary()
    with pytest.raises(DataError, match="no readable crops"):
        folder_crops(root / "selected", ["like"])


def test_photo_crops_are_cut_like_the_pipeline_cuts_them(mini_root, box_spec):
    """Without augmentation, a photo's crop sample is exactly what CropClassifier feeds the model."""
    samples = load_split(mini_root, "val", ["call"])[:3]
    crops = photo_crops(samples, DETECTOR_CLASSES)
    assert len(crops) == sum(len(s.labels) for s in samples)
    ds = CropDataset(crops, box_spec, train=False)
    frame = read_rgb(samples[0].image_path)
    want = crop_inputs(frame, samples[0].boxes_xyxy(frame.shape[1], frame.shape[0])[:1], box_spec)
    got = to_tensor(ds[0][0].numpy().transpose(1, 2, 0)[None], box_spec)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert int(ds[0][1]["gesture"]) == DETECTOR_CLASSES.index(crops[0].label)


def test_box_crops_keep_the_box_and_letterbox_it(box_spec):
    frame = np.zeros((100, 200, 3), np.uint8)
    assert crop_box(np.array([10.2, 20.7, 50.1, 40.0]), 200, 100, box_spec.crop) == (10, 20, 51, 40)
    assert crop_box(np.array([150, 0, 260, 30]), 200, 100, {"kind": "square", "expand": 1.0}) == (150, 0, 200, 70)
    frame[20:40, 10:51] = 255
    x = crop_inputs(frame, np.array([[10, 20, 51, 40]]), box_spec)
    assert x.shape == (1, 3, 128, 128)
    rows = (x[0, 0] > 0.5).any(axis=1)
    assert 40 < rows.sum() < 80  # a 41x20 box letterboxed: about half the square is the box, the rest pad
