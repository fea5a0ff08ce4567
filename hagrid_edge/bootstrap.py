"""How far an mAP on a few hundred photos can be trusted: a bootstrap over the people in them.

Photos of one person share a hand, a room and a camera, so they are not independent draws: the
resampling unit is the user (the image where a split carries no user ids). Each resample draws as
many users as there are, with replacement, and scores every pipeline on the same draw with the
COCO code of ``hagrid-edge eval``. The spread of one pipeline's mAP over the draws is its interval;
for two pipelines on the same photos, the spread of their *difference* on each draw is the paired
interval, which is much narrower than the two intervals side by side, since both see the same hard
photos. A percentile interval; it says nothing about photos of a kind the split does not hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hagrid_edge.data.annotations import Sample
from hagrid_edge.evaluate import ResampledCocoMap, coco_detections, coco_ground_truth
from hagrid_edge.processing import Detections

METRICS = ("mAP50_95", "mAP50")
CONFIDENCE = 0.95


def groups_of(samples: Sequence[Sample]) -> tuple[str, list[np.ndarray]]:
    """The resampling unit ("user" or "image") and the sample indices of each group."""
    if all(s.user_id for s in samples):
        by_user: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            by_user.setdefault(str(s.user_id), []).append(i)
        return "user", [np.asarray(v) for v in by_user.values()]
    return "image", [np.asarray([i]) for i in range(len(samples))]


def _interval(values: np.ndarray) -> list[float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [round(float(low), 2), round(float(high), 2)]


def bootstrap_map(samples: Sequence[Sample], sizes: Sequence[tuple[int, int]],
                  runs: Sequence[Sequence[Detections]], task: str, resamples: int = 1000,
                  seed: int = 0) -> dict:
    """Intervals of mAP50-95 / mAP50 for each detection list in ``runs`` (all on ``samples``), and,
    for two, of the first minus the second on the same draws."""
    unit, groups = groups_of(samples)
    rng = np.random.default_rng(seed)
    gt = coco_ground_truth(samples, sizes, task)
    scorers = [ResampledCocoMap(gt, coco_detections(dets, task)) for dets in runs]
    scores = np.zeros((resamples, len(runs), len(METRICS)))
    for r in range(resamples):
        picked = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        for k, score in enumerate(scorers):
            result = score(picked)
            scores[r, k] = [result[m] for m in METRICS]
    out: dict = {"unit": unit, "groups": len(groups), "resamples": resamples, "confidence": CONFIDENCE,
                 "intervals": [{m: _interval(scores[:, k, j]) for j, m in enumerate(METRICS)}
                               for k in range(len(runs))]}
    if len(runs) == 2:
        diff = scores[:, 0] - scores[:, 1]
        out["difference"] = {m: _interval(diff[:, j]) for j, m in enumerate(METRICS)}
        out["first_better_share"] = {m: round(float((diff[:, j] > 0).mean()), 3) for j, m in enumerate(METRICS)}
    return out
