"""The soak benchmark's plumbing in under a minute: a looping stdin source of the shipped sample photos,
status samples with memory and queue lengths, events read back. The 30-minute figures are the README's."""

from __future__ import annotations

import json
from pathlib import Path

from hagrid_edge.benchmarks import bench_soak


def test_short_soak_samples_memory_and_queues_and_loses_no_event(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    rc = bench_soak.main(["--minutes", "0.35", "--sample-every", "4", "--warmup", "0", "--source", "stdin",
                          "--fps", "10", "--max-rss-growth", "100", "--report", str(report)])
    r = json.loads(report.read_text())
    assert rc == 0
    assert len(r["samples"]) >= 3 and all(s["rss_mb"] > 0 for s in r["samples"])
    assert all(set(s["queues"]) == {"capture", "render", "hooks"} for s in r["samples"])
    assert r["queue_max"] <= 4  # the file-like source's bounded queue
    assert r["summary"]["events"] > 0 and r["dropped_events"] == 0 and r["unended_gestures"] == 0
    assert r["summary"]["stopped_by"] == "SIGINT"
