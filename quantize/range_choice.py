"""Per-tensor activation ranges chosen by quantization error (``calibrate --method mse``).

One clipping level does not suit every tensor: a wide range keeps a layer's rare large values (which this
detector's boxes need) but spends int8 steps on them, a narrow one rounds the common values finely and
clips the rare ones. ``mse`` tries each level of ``MSE_PERCENTILES`` on every tensor and keeps the one whose
expected squared error over all calibration values is least:

- a value inside the range is rounded to a step of ``(high - low) / steps``: ``step**2 / 12`` on average,
  except exact zeros (ReLU outputs, padding), which int8 represents exactly;
- a value outside is clipped to the edge: its distance to the edge, squared.

The TFLite path counts this over the exact tails it keeps of every tensor, the QDQ ONNX path over
ONNX Runtime's histogram of absolute values (symmetric ranges, as TensorRT takes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hagrid_edge.quantize.choices import MSE_PERCENTILES

INT8_STEPS_ASYMMETRIC = 255  # -128..127 with a zero point: the TFLite activations
INT8_STEPS_SYMMETRIC = 254  # -127..127 about zero: the QDQ ONNX's and TensorRT's


@dataclass(frozen=True)
class RangeError:
    """One candidate range of one tensor and its expected squared quantization error (summed over values)."""

    percentile: float
    low: float
    high: float
    error: float


def range_error(percentile: float, low: float, high: float, rounded: float, clipped_sq: float,
                steps: int) -> RangeError:
    """The error of ``[low, high]`` given how many values it rounds and the squared distance of those it clips."""
    step = (high - low) / steps
    return RangeError(percentile, low, high, float(rounded) * step * step / 12.0 + float(clipped_sq))


def least_error(candidates: Sequence[RangeError]) -> RangeError:
    """The candidate with the least error; of equals, the widest (it clips least)."""
    return min(candidates, key=lambda c: (c.error, -(c.high - c.low)))


def tail_count(values: int, percentile: float) -> int:
    """How many of ``values`` lie beyond the ``percentile`` level on one side (at least one: the extreme)."""
    return max(1, int(np.ceil(values * (100.0 - percentile) / 100.0)))


def from_tails(high_tail: np.ndarray, low_tail: np.ndarray, values: int, nonzero: int,
               percentiles: Sequence[float] = MSE_PERCENTILES) -> RangeError:
    """The best level for a tensor of ``values`` values (``nonzero`` of them not 0), from its largest values
    (``high_tail``, ascending) and its most negative ones negated (``low_tail``, ascending), each at least as long as
    the widest cut of ``percentiles`` needs."""
    out = []
    for p in percentiles:
        k = tail_count(values, p)
        high = max(float(high_tail[-min(k, len(high_tail))]), 0.0) if len(high_tail) else 0.0
        low = min(-float(low_tail[-min(k, len(low_tail))]), 0.0) if len(low_tail) else 0.0
        over = high_tail[high_tail > high] - high
        under = low_tail[low_tail > -low] + low
        clipped = float(np.sum(over.astype(np.float64) ** 2) + np.sum(under.astype(np.float64) ** 2))
        rounded = max(nonzero - len(over) - len(under), 0)
        out.append(range_error(p, low, high, rounded, clipped, INT8_STEPS_ASYMMETRIC))
    return least_error(out)


def from_abs_histogram(hist: np.ndarray, edges: np.ndarray, percentiles: Sequence[float] = MSE_PERCENTILES
                       ) -> RangeError:
    """The best symmetric level ``[-T, T]`` from a histogram of absolute values (ONNX Runtime's, ``edges`` from
    near 0): each level's ``T`` is the edge ONNX Runtime's own percentile method would place (the lower edge of the
    bin where that share of the values is reached; the top edge at 100); values count at their bin's centre, the
    first bin's as zeros."""
    hist = np.asarray(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    centres = (edges[:-1] + edges[1:]) / 2.0
    cdf = np.cumsum(hist) / max(hist.sum(), 1.0)
    out = []
    for p in percentiles:
        t = float(edges[min(int(np.searchsorted(cdf, p / 100.0)), len(edges) - 1)]) if p < 100.0 else float(edges[-1])
        outside = centres > t
        clipped = float(np.sum(hist[outside] * (centres[outside] - t) ** 2))
        rounded = float(hist[1:][~outside[1:]].sum())
        out.append(range_error(p, -t, t, rounded, clipped, INT8_STEPS_SYMMETRIC))
    return least_error(out)
