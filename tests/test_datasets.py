"""Detection / classification datasets on real HaGRID frames: letterbox, box mapping, flips, crops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hagrid_edge.data.annotations import load_split
from hagrid_edge.data.datasets import ClassificationDataset, DetectionDataset, collate, normalize
from hagrid_edge.errors import DataError
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import DETECTOR_CLASSES, GESTURES
from hagrid_edge.processing import preprocess
from hagrid_edge.spec import ModelSpec
from hagrid_edge.train.augment import BoxSafeAugment


def _spec(classes, size=(320, 320), task="detector") -> ModelSpec:
    if task == "classifier":
        return ModelSpec(task="classifier", classes=list(classes), input_size=size, outputs="logits",
                         output_names={"logits": "logits"}, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    return ModelSpec(task="detector", classes=list(classes), input_size=size, outputs="ssd_raw",
                     output_names={"bbox_regression": "b", "cls_logits": "c"}, priors=np.ones((1, 4)),
                     mean=(127.5,) * 3, std=(127.5,) * 3)


@pytest.fixture(scope="module")
def val(mini_root):
    return load_split(mini_root, "val", ["call", "palm", "two_up"])


def test_detection_boxes_follow_the_letterbox(val):
    spec = _spec(DETECTOR_CLASSES)
    ds = DetectionDataset(val[:6], spec)
    for i in range(len(ds)):
        image, target = ds[i]
        s = ds.samples[i]
        frame = read_rgb(s.image_path)
        h, w = frame.shape[:2]
        # Independent letterbox arithmetic on the real annotation (normalised x, y, w, h).
        scale = min(320 / w, 320 / h)
        nw, nh = round(w * scale), round(h * scale)
        px, py = (320 - nw) // 2, (320 - nh) // 2
        x, y, bw, bh = s.boxes.T
        expected = np.stack([x * nw + px, y * nh + py, (x + bw) * nw + px, (y + bh) * nh + py], 1)
        np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=1e-3)
        assert target["labels"].tolist() == [DETECTOR_CLASSES.index(lb) + 1 for lb in s.labels]
        # Pixels and normalisation equal the deployment preprocessing of the same frame.
        x_ref, _ = preprocess(frame, spec)
        x_ds = normalize(image[None], spec).numpy()
        np.testing.assert_allclose(x_ds, x_ref, atol=1e-6)


def test_hands_mode_makes_every_box_a_hand(val):
    ds = DetectionDataset(val[:4], _spec(["hand"]))
    for i in range(len(ds)):
        _, target = ds[i]
        assert target["labels"].tolist() == [1] * len(ds.samples[i].labels)


def test_flip_mirrors_boxes_and_swaps_leading_hand(val):
    flip = BoxSafeAugment(hflip=1.0, crop=0.0, color=0.0)
    spec = _spec(DETECTOR_CLASSES)
    plain, flipped = DetectionDataset(val[:3], spec), DetectionDataset(val[:3], spec, flip)
    for i in range(3):
        (_, t_a), (_, t_b) = plain[i], flipped[i]
        a, b = t_a["boxes"].numpy(), t_b["boxes"].numpy()
        np.testing.assert_allclose(b[:, [0, 2]], 320 - a[:, [2, 0]], atol=1.0)
        np.testing.assert_allclose(b[:, [1, 3]], a[:, [1, 3]], atol=1e-3)
    # HaGRID 2.0 files have no leading_hand: take a real entry and give it the v1 field.
    sample = dataclasses.replace(val[0], leading_hand="right")
    cspec = _spec(GESTURES, (224, 224), "classifier")
    assert ClassificationDataset([sample], cspec)[0][1]["leading_hand"].item() == 1
    _, target = ClassificationDataset([sample], cspec, flip)[0]
    assert target["leading_hand"].item() == 0
    assert target["gesture"].item() == GESTURES.index(sample.gesture)
    assert ClassificationDataset(val[:1], cspec)[0][1]["leading_hand"].item() == -1


def test_crop_never_cuts_a_box(val):
    aug = BoxSafeAugment(hflip=0.0, crop=1.0, min_crop=0.3, color=0.0)
    s = val[0]
    frame = read_rgb(s.image_path)
    boxes = s.boxes_xyxy(frame.shape[1], frame.shape[0])
    for seed in range(10):
        out, moved, kept, flipped = aug(frame, boxes, np.random.default_rng(seed))
        assert not flipped and kept.tolist() == list(range(len(boxes)))
        h, w = out.shape[:2]
        assert (moved[:, 0::2] >= 0).all() and (moved[:, 2] <= w).all() and (moved[:, 3] <= h).all()
        np.testing.assert_allclose(moved[:, 2:] - moved[:, :2], boxes[:, 2:] - boxes[:, :2], atol=1.0)
        # The crop is a window of the frame at the offset the boxes moved by.
        x0, y0 = (int(round(v)) for v in boxes[0, :2] - moved[0, :2])
        assert np.array_equal(out, frame[y0:y0 + h, x0:x0 + w])


def test_collate_and_augmented_epochs_differ(val):
    ds = DetectionDataset(val[:2], _spec(DETECTOR_CLASSES), BoxSafeAugment())
    images, targets = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 320, 320) and images.dtype == torch.uint8 and len(targets) == 2
    first = ds[0][0]
    assert torch.equal(first, ds[0][0])  # same (seed, epoch, index): same augmentation
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0][0])


def test_empty_split_is_a_clear_error():
    with pytest.raises(DataError, match="no samples for the detection dataset"):
        DetectionDataset([], _spec(DETECTOR_CLASSES))
