"""Timing one call: warm-up, then N timed runs (and at least a minimum time), summarised.

Latency on shared machines is noisy: the summary keeps the median and tail percentiles rather
than a single mean, and the gate only ever compares ratios of figures taken in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyConfig:
    warmup: int = 10
    runs: int = 100
    min_time_s: float = 0.0  # keep timing past ``runs`` until this much time has been measured
    threads: int = 1


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    fps: float  # 1 / median

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarise(seconds: list[float]) -> LatencyStats:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        raise ValueError("no timed runs to summarise")
    median = float(np.median(ms))
    return LatencyStats(
        runs=int(ms.size),
        median_ms=round(median, 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        mean_ms=round(float(ms.mean()), 3),
        std_ms=round(float(ms.std(ddof=1)) if ms.size > 1 else 0.0, 3),
        min_ms=round(float(ms.min()), 3),
        fps=round(1000.0 / median, 2) if median > 0 else float("inf"),
    )


def time_calls(call: Callable[[int], object], config: LatencyConfig) -> LatencyStats:
    """Time ``call(i)`` for i = 0, 1, ...: ``warmup`` untimed calls, then ``runs`` timed ones
    (more while less than ``min_time_s`` has been measured)."""
    for i in range(config.warmup):
        call(i)
    seconds: list[float] = []
    total = 0.0
    i = 0
    while i < config.runs or total < config.min_time_s:
        t0 = time.perf_counter()
        call(config.warmup + i)
        dt = time.perf_counter() - t0
        seconds.append(dt)
        total += dt
        i += 1
    return summarise(seconds)
