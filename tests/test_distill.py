"""Distillation from the authors' 45-class crop classifier and from their hand detector, crops at a
detector's boxes, and the label-stability measure, on real photos, crops and models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from one_stage import one_stage_detector, photo_batch

from hagrid_edge.data.annotations import load_split
from hagrid_edge.data.crops import CropDataset, detected_crops, folder_crops, photo_crops
from hagrid_edge.data.datasets import normalize
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import DETECTOR_CLASSES, NO_GESTURE
from hagrid_edge.models import ModelConfig, build_model, model_spec, onnx_model
from hagrid_edge.paths import REPO_ROOT
from hagrid_edge.pipeline import CropClassifier, Detector
from hagrid_edge.processing import crop_inputs
from hagrid_edge.spec import resolve_spec
from hagrid_edge.train.distill import (
    class_matrix,
    detector_distill_loss,
    detector_teacher,
    distill_loss,
    teacher_targets,
)
from hagrid_edge.train.stability import flip_share


@pytest.fixture(scope="module")
def student(crop_classifier):
    model, cfg, _ = onnx_model("onnx_classifier", crop_classifier, list(DETECTOR_CLASSES))
    return model_spec(cfg, model)


@pytest.fixture(scope="module")
def photos(mini_root):
    return load_split(mini_root, "train")[::200]


def test_each_teacher_class_counts_as_one_of_ours(crop_classifier):
    teacher = resolve_spec(crop_classifier)
    m = class_matrix(teacher, DETECTOR_CLASSES)
    assert m.shape == (45, 19) and (m.sum(1) == 1).all()
    assert m[teacher.classes.index("like"), DETECTOR_CLASSES.index("like")] == 1
    assert m[teacher.classes.index("hand_down"), DETECTOR_CLASSES.index(NO_GESTURE)] == 1
    assert m[:, DETECTOR_CLASSES.index(NO_GESTURE)].sum() == 45 - 18  # every class that is none of the 18


def test_teacher_targets_agree_with_the_teacher_in_the_pipeline(crop_classifier, student, photos):
    crops = photo_crops(photos, student.classes)
    soft = teacher_targets(str(crop_classifier), crops, student)
    assert soft.shape == (len(crops), 19) and np.allclose(soft.sum(1), 1, atol=1e-4)
    teacher = CropClassifier(open_backend(crop_classifier))
    sure = 0
    for k, c in enumerate(crops):
        frame = read_rgb(c.image_path)
        box = np.array(c.box) * np.array([frame.shape[1], frame.shape[0]] * 2)
        ids, probs = teacher(frame, box[None])
        if probs[0] > 0.9:  # where the teacher is sure, its mirror view agrees and the label survives the sum
            sure += 1
            assert student.classes[int(soft[k].argmax())] == teacher.spec.label(int(ids[0]))
    assert sure >= len(crops) // 2


def test_crops_at_detections_take_the_label_of_the_hand_they_cover(hand_detector, student, photos):
    detector = Detector(open_backend(hand_detector), 0.3)
    crops = detected_crops(photos, detector, student.classes, 0.3)
    hands = sum(len(s.labels) for s in photos)
    assert hands * 0.8 <= len(crops) <= hands * 1.5  # these boxes came from this detector (data README)
    by_photo = {s.image_path: s.labels for s in photos}
    labelled = [c for c in crops if c.label is not None]
    assert len(labelled) >= 0.8 * len(crops) and all(c.label in by_photo[c.image_path] for c in labelled)
    ds = CropDataset(crops, student, train=False)
    frame = read_rgb(crops[0].image_path)
    box = np.array(crops[0].box) * np.array([frame.shape[1], frame.shape[0]] * 2)
    assert torch.allclose(normalize(ds[0][0][None].float(), student),
                          torch.from_numpy(crop_inputs(frame, box[None], student)), atol=1e-5)


def test_mixed_folders_are_kept_unlabelled_for_the_teacher(crops_root, student, crop_classifier, tmp_path):
    for cls in ("none", "like"):  # a few real crops of a mixed folder and of a gesture
        (tmp_path / "selected" / cls).mkdir(parents=True)
        for f in sorted((crops_root / "selected" / cls).iterdir())[:6]:
            shutil.copy(f, tmp_path / "selected" / cls / f.name)
    assert len(folder_crops(tmp_path, student.classes).samples) == 6  # without a teacher: skipped
    found = folder_crops(tmp_path, student.classes, keep_unknown=True)
    picked = found.samples
    assert [s.label for s in picked] == ["like"] * 6 + [None] * 6
    assert "6 crops of folders of classes the model lacks kept unlabelled: none" in found.summary()
    soft = teacher_targets(str(crop_classifier), picked, student)
    ds = CropDataset(picked, student, train=True, soft=soft)
    _, target = ds[6]
    assert int(target["gesture"]) == -1 and int(ds[0][1]["gesture"]) == student.classes.index("like")
    assert torch.allclose(target["soft"], torch.from_numpy(soft[6]))


def test_distill_loss_is_the_teacher_kl_plus_cross_entropy_on_labelled_crops():
    torch.manual_seed(0)
    logits = torch.randn(6, 19, requires_grad=True)
    soft = torch.softmax(logits.detach(), 1)
    hard = torch.tensor([3, -1, 5, -1, 0, 18])
    loss, parts = distill_loss(logits, soft, hard, alpha=1.0)
    assert abs(parts["kl"]) < 1e-5 and abs(float(loss.detach())) < 1e-5  # the student already is the teacher
    loss, parts = distill_loss(logits, soft, hard, alpha=0.0)
    want = torch.nn.functional.cross_entropy(logits[hard >= 0], hard[hard >= 0])
    assert torch.isclose(loss, want)
    loss.backward()
    assert logits.grad[1].abs().sum() == 0  # unlabelled rows learn from the teacher only


def test_flip_share_counts_label_changes_under_box_moves(hand_detector, crop_classifier, photos):
    detector = Detector(open_backend(hand_detector), 0.3)
    classifier = CropClassifier(open_backend(crop_classifier))
    still = flip_share(detector, [classifier], photos, shift=0.0)
    assert still["hands"] > 0 and still["flip_percent"] == [0.0]
    moved = flip_share(detector, [classifier], photos, shift=12.0)
    assert moved["hands"] == still["hands"] and 0 < moved["flip_percent"][0] <= 100


def test_a_mirrored_classifier_answers_for_the_crop_and_its_mirror_and_exports(crop_classifier, student, photos):
    import onnxruntime as ort

    from hagrid_edge.export import to_onnx_bytes

    plain, _, _ = onnx_model("onnx_classifier", crop_classifier, list(DETECTOR_CLASSES))
    mirrored, cfg, _ = onnx_model("onnx_classifier", crop_classifier, list(DETECTOR_CLASSES), mirror=True)
    assert cfg.mirror and cfg.to_dict()["mirror"] is True
    frame = read_rgb(photos[0].image_path)
    x = torch.from_numpy(crop_inputs(frame, photos[0].boxes_xyxy(frame.shape[1], frame.shape[0]), student))
    with torch.no_grad():
        mirrored.train()
        assert torch.equal(mirrored(x)["logits"], plain(x)["logits"])  # training: single views
        mirrored.eval()
        want = (torch.softmax(plain(x)["logits"], 1) + torch.softmax(plain(x.flip(3))["logits"], 1)) / 2
        got = mirrored(x)["logits"]
    assert torch.allclose(torch.softmax(got, 1), want, atol=1e-6)
    session = ort.InferenceSession(to_onnx_bytes(mirrored, model_spec(cfg, mirrored), 17))
    onnx_logits = session.run(None, {"input": x.numpy()})[0]
    assert np.allclose(torch.softmax(torch.from_numpy(onnx_logits), 1).numpy(), want.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def one_stage(hand_detector):
    """The one-stage gesture detector as training starts: the authors' detector with 19 class heads."""
    return one_stage_detector(hand_detector)


@pytest.fixture(scope="module")
def four_photos(one_stage, photos):
    """Four real train photos in the one-stage detector's input."""
    return photo_batch(photos[:4], one_stage[1])


def test_the_one_stage_detector_starts_as_its_teacher(hand_detector, one_stage, four_photos):
    """The new class heads split the hand logit among the gestures, so 1 - background is the teacher's
    hand probability and the boxes are its boxes: the teacher's terms start at 0."""
    teacher = detector_teacher(str(hand_detector), one_stage[1])
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        taught, student = teacher(four_photos), one_stage[0].eval()(four_photos)
    assert (torch.softmax(taught["cls_logits"], -1)[..., 1] > 0.5).sum() >= 4  # hands on the photos
    loss, parts = detector_distill_loss(student, taught)
    assert float(loss) < 1e-4 and parts["teacher_box"] < 1e-6


def test_a_trained_student_learns_the_teachers_hands_back(hand_detector, one_stage, four_photos):
    """The shipped one-stage detector, trained on the auto-made boxes alone, has drifted from the teacher;
    a few steps on real photos (batch norm frozen) bring its hand probability and boxes back towards it."""
    teacher = detector_teacher(str(hand_detector), one_stage[1])
    student = onnx_model("onnx_ssd", REPO_ROOT / "assets" / "models" / "gesture_detector.onnx",
                         list(DETECTOR_CLASSES))[0].eval()
    with torch.no_grad():
        taught = teacher(four_photos)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, _ = detector_distill_loss(student(four_photos), taught)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(float(loss.detach()), 4))
    assert losses[0] > 1.0 and losses[-1] < 0.5 * losses[0], losses
def test_a_detector_teacher_must_share_the_students_anchors(hand_detector):
    cfg = ModelConfig("ssdlite320_mobilenet_v3_small", list(DETECTOR_CLASSES))
    with pytest.raises(HagridEdgeError, match="hand_detector.onnx: a detector's teacher must take the student's"):
        detector_teacher(str(hand_detector), model_spec(cfg, build_model(cfg)))
