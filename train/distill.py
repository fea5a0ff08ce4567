"""Distillation of a hand-crop classifier from a teacher classifier with other classes.

The teacher (the HaGRID authors' 45-class crop classifier) labels every training crop once, before
the first epoch: its probabilities, averaged over the crop and its mirror image, are summed into the
student's classes through the teacher's spec (a class the spec maps to none of ours counts as
no_gesture). The target is taken at the crop's own box while the student sees jittered boxes, so the
student learns one label per hand, not one per pixel of box placement: the label flips under box
jitter are what keep the INT8 pair from holding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hagrid_edge.data.crops import CropSample, source_image
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.errors import HagridEdgeError
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
