"""What a run measured, in bounded memory: frame counts, capture health, events, per-stage times.

A run may last weeks as a service, so nothing grows with its length: each stage keeps its count
and mean over the whole run and its percentiles over the newest ``WINDOW`` samples; events are
counted, not kept.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Iterator

import numpy as np

from hagrid_edge.deploy.common.capture import SourceEvent
from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.deploy.common.hooks import HookStats
from hagrid_edge.deploy.common.mqtt_events import MqttStats
from hagrid_edge.pipeline import StageTimes

PERCENTILES = (50, 90, 99)
WINDOW = 10_000  # samples per stage that percentiles are taken over
# Stage names, in the order the table prints them; "latency" is capture to the end of the frame's work.
STAGES = ("capture", "pre", "infer", "post", "landmarks", "track", "render", "latency")


class StageStats:
    """One stage's timings: count and mean over the run, percentiles over the newest ``window`` samples."""

    def __init__(self, window: int = WINDOW) -> None:
        self.count, self.total = 0, 0.0
        self.recent: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.recent.append(seconds)

    def row_ms(self) -> dict[str, float]:
        ms = np.asarray(self.recent, np.float64) * 1e3
        return {**{f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}, "mean": self.total / self.count * 1e3}


class Summary:
    """The statistics of one run, filled by the loop's steps and read by ``format``/``to_dict``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.frames = 0
        self.stopped_by = "end of source"
        self.corrupt = self.dropped = self.reconnects = self.reconnect_attempts = self.read_errors = 0
        self.source_lost = self.stale = 0
        self.outage_s = 0.0  # live source lost: excluded from the frame rate
        self.video_frames = 0
        self.outputs: dict[str, dict] = {}  # per RTSP / page --output: frames sent, dropped (slow or gone viewers)
        self.hooks = HookStats()  # hook calls started, skipped, timed out, killed, failed
        self.mqtt: MqttStats | None = None  # events published, dropped, unsent, reconnects (mqtt:// events)
        self.events = 0
        self.starts: collections.Counter[str] = collections.Counter()
        self.stages = {s: StageStats() for s in STAGES}
        self.last_ms: dict[str, float] = {}  # the newest frame's stage times, for the on-screen overlay
        self.fps_now = 0.0  # smoothed frame rate, for the overlay
        self._t0 = self._last = time.perf_counter()
        self.wall_s = 0.0

    # ---- filled by the loop ---------------------------------------------------------------------
    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage].add(seconds)
        self.last_ms[stage] = seconds * 1e3

    def add_times(self, times: StageTimes) -> None:
        for stage in ("pre", "infer", "post"):
            self.add(stage, getattr(times, stage))

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.add(stage, time.perf_counter() - t0)

    def count_events(self, events: Iterable[GestureEvent | SourceEvent]) -> None:
        for event in events:
            if isinstance(event, SourceEvent):
                self.source_lost += event.kind == "source_lost"
                continue
            self.events += 1
            if event.kind == "start":
                self.starts[event.gesture] += 1

    def frame_done(self, captured_at: float, capture_s: float) -> None:
        """One frame went through every step: count it, its capture time, its latency and the frame rate."""
        now = time.perf_counter()
        self.frames += 1
        self.add("capture", capture_s)
        self.add("latency", time.time() - captured_at)
        dt, self._last = max(now - self._last, 1e-9), now
        self.fps_now = 1.0 / dt if self.fps_now == 0.0 else 0.9 * self.fps_now + 0.1 / dt

    def live(self) -> dict:
        """The figures a live page shows: frame rate, frames, the newest frame's stage times (any thread)."""
        last = dict(self.last_ms)  # one copy: the loop may add a stage meanwhile
        return {"fps": round(self.fps_now, 2), "frames": self.frames, "stage_ms": {k: round(v, 2) for k, v in last.items()}}

    def finish(self) -> None:
        self.wall_s = time.perf_counter() - self._t0

    # ---- read ----------------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        """Frames per second of the time the source delivered (outages left out)."""
        live_s = self.wall_s - self.outage_s
        return self.frames / live_s if live_s > 0 else 0.0

    def status(self, queues: dict[str, int]) -> dict:
        """A snapshot for a long run's periodic status line: counts so far, queue lengths, memory."""
        return {"wall_s": round(time.perf_counter() - self._t0, 1), "frames": self.frames,
                "fps_now": round(self.fps_now, 2), "events": self.events, "source_lost": self.source_lost,
                "queues": queues, "rss_mb": rss_mb()}

    def percentiles_ms(self) -> dict[str, dict[str, float]]:
        """Per stage with samples: p50/p90/p99 over the newest samples and the run's mean, in ms."""
        return {name: st.row_ms() for name, st in self.stages.items() if st.count}

    def to_dict(self) -> dict:
        return {"source": self.source, "frames": self.frames, "wall_s": round(self.wall_s, 3),
                "fps": round(self.fps, 2), "stopped_by": self.stopped_by, "corrupt_frames": self.corrupt,
                "dropped_frames": self.dropped, "source_lost": self.source_lost, "stale_frames": self.stale,
                "reconnects": self.reconnects, "reconnect_attempts": self.reconnect_attempts,
                "outage_s": round(self.outage_s, 3), "read_errors": self.read_errors, "events": self.events,
                "video_frames": self.video_frames, "hooks_started": self.hooks.started,
                "hooks_skipped": self.hooks.skipped, "hooks_timed_out": self.hooks.timed_out,
                "hooks_killed_at_end": self.hooks.killed_at_end, "hooks_failed": self.hooks.failed,
                "stage_ms": {k: {m: round(v, 3) for m, v in d.items()} for k, d in self.percentiles_ms().items()},
                **({"mqtt": dataclasses.asdict(self.mqtt)} if self.mqtt is not None else {}),
                **({"outputs": self.outputs} if self.outputs else {})}

    def format(self) -> str:
        outage = f", {self.outage_s:.1f} s of it without a source" if self.outage_s else ""
        lines = [f"{self.source}: {self.frames} frames in {self.wall_s:.2f} s{outage} = {self.fps:.1f} FPS "
                 f"(stopped by {self.stopped_by})",
                 f"  corrupt frames skipped {self.corrupt}, live frames dropped {self.dropped}, read errors "
                 f"{self.read_errors}",
                 f"  source lost {self.source_lost} (stale frames {self.stale}), reconnects {self.reconnects} "
                 f"({self.reconnect_attempts} attempts), outage {self.outage_s:.1f} s",
                 f"  gesture events {self.events}: "
                 + (", ".join(f"{g} x{n}" for g, n in self.starts.most_common()) or "none")]
        h = self.hooks
        if h.started or h.skipped:
            lines.append(f"  hooks started {h.started}, skipped {h.skipped}, timed out {h.timed_out}, killed at the "
                         f"end {h.killed_at_end}, failed {h.failed}")
        if self.mqtt is not None:
            m = self.mqtt
            lines.append(f"  mqtt events published {m.published}, dropped (queue full) {m.dropped}, unsent at the end "
                         f"{m.unsent}, reconnects {m.reconnects}")
        for uri, o in self.outputs.items():
            lines.append(f"  {uri}: frames sent {o['frames_sent']}, dropped {o['frames_dropped']} (a viewer or encoder behind)")
        table = self.percentiles_ms()
        if table:
            heads = ("p50", "p90", "p99", "mean")
            lines.append(f"  {'stage ms':10s}" + "".join(f"{h:>9s}" for h in heads))
            for stage, row in table.items():
                lines.append(f"  {stage:10s}" + "".join(f"{row[h]:9.2f}" for h in heads))
        return "\n".join(lines)


def rss_mb() -> float | None:
    """This process's resident memory in MB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
