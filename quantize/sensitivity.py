"""Mixed precision: keep in float the layers that buy the most accuracy for what they cost on the board.

Format-independent: it sees a model only through its ``Candidates`` (ONNX QDQ or TFLite) and runs
every candidate through the deployed backend. Where each layer's cost on the board is known (the
instructions it adds on a Pi 5 when kept in float, ``board_cost``: TFLite), a layer's gain is measured
where the guard judges, on the tune photos: the candidate with only that layer in float against the
all-int8 one (agreement points + mAP points), and layers are ranked by gain per instruction. The
output error that int8 adds does not predict detections: choosing each activation range by it halved
the gesture detector's output error and lost 0.3 agreement points. Without costs (QDQ ONNX, whose
cost the Pi model does not cover) the ranking is by sensitivity: the relative output error (noise /
signal power, summed over the outputs, dequantized) of the candidate with only that layer in INT8, on
calibration photos. The guard keeps the k first-ranked layers in float for growing k and scores each
candidate on the tune photos, stopping at the first that holds both limits: at most ``max_drop``
points below FP32 against the annotations (and ``max_drop50`` in mAP50), and at least
``min_agreement`` with the FP32 model's own detections (the steadier of the two: it needs no labels and moves less between photo sets). With
costs, it then tries to give back each float layer of that candidate, the costliest first, and keeps
every removal after which the limits still hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
PRUNE_TRIES = 12  # float layers the cost pass tries to give back (each try scores one candidate on tune)


@dataclass
class Limits:
    max_drop: float  # points of the headline metric against the annotations
    min_agreement: float | None  # mAP50-95 against the FP32 model's detections (None: not a detector)
    # points of mAP50 against the annotations, where both scores have it (None: not held)
    max_drop50: float | None = field(default=None, kw_only=True)

    def holds(self, reference: Score, score: Score) -> bool:
        """Within ``max_drop`` of the reference (and ``max_drop50`` in mAP50), and losing at most
        ``100 - min_agreement`` agreement points against it (an FP32 reference agrees with itself at 100; a
        pipeline reference may agree less)."""
        if reference.value - score.value > self.max_drop:
            return False
        ref50, got50 = reference.secondary.get("mAP50"), score.secondary.get("mAP50")
        if self.max_drop50 is not None and ref50 is not None and got50 is not None and ref50 - got50 > self.max_drop50:
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
    ranked_by: str = "sensitivity"  # or "gain per instruction" when the layers' costs were known
    gains: list[tuple[str, float]] = field(default_factory=list)  # layer -> tune points its float form gains


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


def _trial(k: int, score: Score, dropped: str | None = None) -> dict:
    out = {"float_layers": k, "value": score.value, "agreement": score.agreement.get("mAP50_95")}
    return {**out, "gave_back": dropped} if dropped else out


def _points(score: Score) -> float:
    return score.value + score.agreement.get("mAP50_95", 0.0)


def unit_gains(cands: Candidates, scorer: Scorer, all_int8: Score) -> list[tuple[str, float]]:
    """(layer, points gained on the scorer's photos with only it in float: agreement + mAP), most first."""
    gains = []
    for unit in cands.units:
        cand = cands.build(float_layers=[unit])
        gains.append((unit, round(_points(scorer.score(cand.path, cand.spec)) - _points(all_int8), 4)))
    return sorted(gains, key=lambda t: -t[1])


def rank(gains: Sequence[tuple[str, float]], costs: Mapping[str, float] | None) -> list[str]:
    """Layers in the order the guard keeps them in float: most gain per instruction first when ``costs``
    (instructions each adds in float) are known, most gain first otherwise."""
    if not costs:
        return [name for name, _ in gains]
    floor = max(1.0, min((c for c in costs.values() if c > 0), default=1.0))  # a layer that costs nothing
    return [name for name, _ in sorted(gains, key=lambda t: -t[1] / max(costs.get(t[0], floor), floor))]


def _give_back(cands: Candidates, chosen: GuardResult, scorer: Scorer, reference: Score, limits: Limits,
               costs: Mapping[str, float]) -> GuardResult:
    """``chosen`` with every float layer (costliest first, at most ``PRUNE_TRIES``) that can go back to int8
    while the limits still hold on the tune photos."""
    floats = list(chosen.candidate.float_layers)
    for name in sorted(floats, key=lambda n: -costs.get(n, 0.0))[:PRUNE_TRIES]:
        trial = [n for n in floats if n != name]
        cand = cands.build(float_layers=trial)
        score = scorer.score(cand.path, cand.spec)
        chosen.trials.append(_trial(len(trial), score, name))
        if limits.holds(reference, score):
            floats = trial
            chosen = GuardResult(cand, score, True, chosen.trials, chosen.sensitivity, chosen.ranked_by, chosen.gains)
    return chosen


def mixed_precision(cands: Candidates, fp32: Candidate, calib_photos: Sequence[Sample], scorer: Scorer,
                    reference: Score, limits: Limits, costs: Mapping[str, float] | None = None) -> GuardResult:
    """The fully INT8 candidate if it holds ``limits`` on the scorer's photos, else the first with the k
    first-ranked layers (``rank``) in float that does, then (with ``costs``) with the float layers it can
    give back returned to int8; when none holds, the best one with ``within=False``."""
    first = cands.build()
    score = scorer.score(first.path, first.spec)
    trials = [_trial(0, score)]
    if limits.holds(reference, score):
        return GuardResult(first, score, True, trials)
    if costs:
        gains, ranking, how = unit_gains(cands, scorer, score), [], "gain per instruction"
    else:
        ranking = layer_sensitivity(cands, fp32, calib_photos)
        gains, how = ranking, "sensitivity"
    order = rank(gains, costs)
    keep = {"sensitivity": ranking, "ranked_by": how, "gains": gains if costs else []}
    best = GuardResult(first, score, False, trials, **keep)
    for k in _schedule(len(order)):
        cand = cands.build(float_layers=order[:k])
        cand_score = scorer.score(cand.path, cand.spec)
        trials.append(_trial(k, cand_score))
        if limits.holds(reference, cand_score):
            found = GuardResult(cand, cand_score, True, trials, **keep)
            return _give_back(cands, found, scorer, reference, limits, costs) if costs else found
        if cand_score.value > best.score.value:
            best = GuardResult(cand, cand_score, False, trials, **keep)
    return best
