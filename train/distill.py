"""Distillation from a teacher model: hand-crop classifiers from a classifier, detectors from a hand detector.

Classifiers: the teacher (the HaGRID authors' 45-class crop classifier) labels every training crop once, before
the first epoch: its probabilities, averaged over the crop and its mirror image, are summed into the
student's classes through the teacher's spec (a class the spec maps to none of ours counts as
no_gesture). The target is taken at the crop's own box while the student sees jittered boxes, so the
student learns one label per hand, not one per pixel of box placement: the label flips under box
jitter are what keep the INT8 pair from holding.

Detectors: the one-stage gesture detector learns its gestures from the train boxes, which were made
automatically and miss about one hand in seven; fine-tuned on them alone it finds hands worse than the
hand detector it started from. A frozen single-class hand detector on the same input and anchors (the
HaGRID authors' raw heads) sees every augmented batch, and the student learns, at every anchor, the
teacher's hand probability as its own (1 - background) and, weighted by that probability, the
teacher's box offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hagrid_edge.data.crops import CropSample, source_image
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.models import model_spec, onnx_model
from hagrid_edge.processing import activate, crop_box, output, resize_frame, to_tensor
from hagrid_edge.spec import ModelSpec


def class_matrix(teacher: ModelSpec, classes: Sequence[str]) -> np.ndarray:
    """(teacher classes, student classes) 0/1: which student class each teacher class counts as."""
    index = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(teacher.classes), len(classes)), np.float32)
    for i in range(len(teacher.classes)):
        label = teacher.label(i)
        if label not in index:
            raise HagridEdgeError(f"teacher class {teacher.classes[i]!r} counts as {label!r}, "
                                  f"which the student lacks")
        m[i, index[label]] = 1.0
    return m


def _same_input(teacher: ModelSpec, student: ModelSpec) -> bool:
    return (list(teacher.input_size) == list(student.input_size) and teacher.crop == student.crop
            and teacher.resize == student.resize)


def teacher_targets(teacher_path: str, samples: Sequence[CropSample], student: ModelSpec,
                    batch: int = 256, threads: int | None = None) -> np.ndarray:
    """(len(samples), student classes) probabilities of the teacher at each sample's own box."""
    backend = open_backend(teacher_path, threads=threads)
    spec = backend.spec
    if spec.task != "classifier" or spec.crop is None:
        raise HagridEdgeError(f"{teacher_path}: a teacher must be a hand-crop classifier")
    if not _same_input(spec, student):
        raise HagridEdgeError(f"{teacher_path}: the teacher cuts hands otherwise than the student "
                              f"({spec.input_size} {spec.crop}, student {student.input_size} {student.crop})")
    matrix = class_matrix(spec, student.classes)
    out = np.zeros((len(samples), len(student.classes)), np.float32)
    for start in range(0, len(samples), batch):
        images = []
        for s in samples[start:start + batch]:
            frame, box = source_image(s, student)
            x1, y1, x2, y2 = crop_box(box, frame.shape[1], frame.shape[0], spec.crop)
            images.append(resize_frame(frame[y1:y2, x1:x2], spec)[0])
        stack = np.stack(images)
        probs = sum(activate(output(backend.infer(to_tensor(views, spec)), spec, "logits"), spec.score_activation)
                    for views in (stack, np.ascontiguousarray(stack[:, :, ::-1])))
        out[start:start + len(images)] = (probs / 2) @ matrix
    return out


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, hard: torch.Tensor, alpha: float
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """``alpha`` x KL(teacher || student) + (1 - alpha) x cross-entropy on the crops with a label."""
    log_p = F.log_softmax(logits.float(), dim=1)
    kl = (soft * (torch.log(soft.clamp_min(1e-8)) - log_p)).sum(1).mean()
    labelled = hard >= 0
    ce = F.nll_loss(log_p[labelled], hard[labelled]) if bool(labelled.any()) else log_p.sum() * 0.0
    loss = alpha * kl + (1 - alpha) * ce
    return loss, {"kl": float(kl.detach()), "gesture": float(ce.detach())}


def detector_teacher(path: str, student: ModelSpec) -> nn.Module:
    """A frozen single-class hand detector (raw heads, ONNX) that sees the student's input at its anchors."""
    model, cfg, _ = onnx_model("onnx_ssd", path, ["hand"])
    teacher = model_spec(cfg, model)
    same = (_same_input(teacher, student) and tuple(teacher.mean) == tuple(student.mean)
            and tuple(teacher.std) == tuple(student.std) and student.priors is not None
            and np.shape(teacher.priors) == np.shape(student.priors)
            and bool(np.allclose(teacher.priors, student.priors, atol=1e-3)))
    if not same:
        raise HagridEdgeError(f"{path}: a detector's teacher must take the student's input and anchors "
                              f"({student.input_size} {student.resize}, "
                              f"{0 if student.priors is None else len(student.priors)} anchors)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def detector_distill_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
                          ) -> tuple[torch.Tensor, dict[str, float]]:
    """Hand probability (binary KL divergence of 1 - background from the teacher's) and box offsets
    (smooth L1 weighted by the teacher's hand probability), summed over anchors, divided by the
    teacher's hands (the sum of its hand probability); both 0 where the student is the teacher."""
    logits = student["cls_logits"].float()
    hand = torch.softmax(teacher["cls_logits"].float(), dim=-1)[..., 1]
    total = torch.logsumexp(logits, dim=-1)
    log_hand = torch.logsumexp(logits[..., 1:], dim=-1) - total  # log(1 - P(background))
    log_background = logits[..., 0] - total
    norm = hand.sum().clamp_min(1.0)
    entropy = torch.special.xlogy(hand, hand) + torch.special.xlogy(1 - hand, 1 - hand)
    obj = (entropy - hand * log_hand - (1 - hand) * log_background).sum() / norm
    offsets = F.smooth_l1_loss(student["bbox_regression"].float(), teacher["bbox_regression"].float(),
                               reduction="none").sum(-1)
    box = (hand * offsets).sum() / norm
    return obj + box, {"teacher_hand": float(obj.detach()), "teacher_box": float(box.detach())}
