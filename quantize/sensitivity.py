"""Mixed precision: find the layers whose INT8 costs most and keep them in float until accuracy holds.

Format-independent: it sees a model only through its ``Candidates`` (ONNX QDQ or TFLite) and runs
every candidate through the deployed backend. Sensitivity of a layer = relative output error (noise
/ signal power, summed over the outputs, dequantized) of the candidate with only that layer in INT8,
on calibration photos. The guard then keeps the k most sensitive layers in float for growing k and
scores each candidate on the tune photos, stopping at the first that holds both limits: at most
``max_drop`` points below FP32 against the annotations, and at least ``min_agreement`` with the
FP32 model's own detections (the steadier of the two: it needs no labels and moves less between
photo sets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hagrid_edge.data.annotations import Sample
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.images import read_rgb
from hagrid_edge.processing import crop_inputs, output, preprocess
from hagrid_edge.quantize.accuracy import Score, Scorer
from hagrid_edge.quantize.candidates import Candidate, Candidates
from hagrid_edge.spec import ModelSpec

SENSITIVITY_PHOTOS = 24


@dataclass
class Limits:
    max_drop: float  # points of the headline metric against the annotations
    min_agreement: float | None  # mAP50-95 against the FP32 model's detections (None: not a detector)

    def holds(self, reference: Score, score: Score) -> bool:
        """Within ``max_drop`` of the reference, and losing at most ``100 - min_agreement`` agreement points
        against it (an FP32 reference agrees with itself at 100; a pipeline reference may agree less)."""
        if reference.value - score.value > self.max_drop:
            return False
        agreement = score.agreement.get("mAP50_95")
        if self.min_agreement is None or agreement is None:
            return True
        return reference.agreement.get("mAP50_95", 100.0) - agreement <= 100.0 - self.min_agreement


@dataclass
class GuardResult:
    candidate: Candidate
    score: Score
    within: bool
    trials: list[dict] = field(default_factory=list)  # {"float_layers": k, "value": .., "agreement": ..}
    sensitivity: list[tuple[str, float]] = field(default_factory=list)


def model_inputs(spec: ModelSpec, photos: Sequence[Sample]) -> list[np.ndarray]:
    """Batch-1 inputs of ``spec``'s model for ``photos``, built exactly as inference builds them."""
    inputs: list[np.ndarray] = []
    for s in photos:
        frame = read_rgb(s.image_path)
        if spec.crop is not None:  # a crop model (classifier, landmarks) sees the hands, not the frame
            crops = crop_inputs(frame, s.boxes_xyxy(frame.shape[1], frame.shape[0]), spec)
            inputs += [crops[i:i + 1] for i in range(len(crops))]
        else:
            inputs.append(preprocess(frame, spec)[0])
    return inputs


def outputs(candidate: Candidate, photos: Sequence[Sample]) -> list[np.ndarray]:
    """Every output role of ``candidate`` on ``photos``, dequantized, concatenated over photos."""
    backend = open_backend(candidate.path, spec=candidate.spec)
    runs = [backend.infer(x) for x in model_inputs(candidate.spec, photos)]
    return [np.concatenate([output(r, candidate.spec, role) for r in runs]) for role in candidate.spec.output_names]


def relative_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return float(sum(np.sum((g - r) ** 2) / max(float(np.sum(r ** 2)), 1e-12) for r, g in zip(ref, got, strict=True)))


def layer_sensitivity(cands: Candidates, fp32: Candidate, photos: Sequence[Sample]) -> list[tuple[str, float]]:
    """(layer, relative output error with only it in INT8), most sensitive first."""
    step = max(1, len(photos) // SENSITIVITY_PHOTOS)
    probe = list(photos[::step][:SENSITIVITY_PHOTOS])
    ref = outputs(fp32, probe)
    ranking = [(u, relative_error(ref, outputs(cands.build(only=[u]), probe))) for u in cands.units]
    return sorted(ranking, key=lambda t: -t[1])


def _schedule(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    return ks + [n]


def _trial(k: int, score: Score) -> dict:
    return {"float_layers": k, "value": score.value, "agreement": score.agreement.get("mAP50_95")}


def mixed_precision(cands: Candidates, fp32: Candidate, calib_photos: Sequence[Sample], scorer: Scorer,
                    reference: Score, limits: Limits) -> GuardResult:
    """The fully INT8 candidate if it holds ``limits`` on the scorer's photos, else the first with the k
    most sensitive layers in float that does; when none does, the best one with ``within=False``."""
    first = cands.build()
    score = scorer.score(first.path, first.spec)
    trials = [_trial(0, score)]
    if limits.holds(reference, score):
        return GuardResult(first, score, True, trials)
    ranking = layer_sensitivity(cands, fp32, calib_photos)
    best = GuardResult(first, score, False, trials, ranking)
    for k in _schedule(len(ranking)):
        cand = cands.build(float_layers=[name for name, _ in ranking[:k]])
        cand_score = scorer.score(cand.path, cand.spec)
        trials.append(_trial(k, cand_score))
        if limits.holds(reference, cand_score):
            return GuardResult(cand, cand_score, True, trials, ranking)
        if cand_score.value > best.score.value:
            best = GuardResult(cand, cand_score, False, trials, ranking)
    return best
