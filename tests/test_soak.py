"""The soak benchmark in under a minute: a looping stdin source of the shipped sample photos, status samples
with memory and queue lengths, events read back, and its memory check at the README's limit (RSS may grow
less than 5 % after the warm-up), shown to fail on a run that leaks. The 30-minute figures are the README's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hagrid_edge.benchmarks import bench_soak

README_MAX_RSS_GROWTH = "5"  # README "Soak": it exits 1 when RSS grows 5 % or more after the warm-up
# A real leak planted in the run's own process (Python imports sitecustomize from PYTHONPATH at start-up):
# 1.5 MiB of touched memory a second, about 10 % of the run's RSS over the smoke test's counted window.
LEAK = '''import threading, time
def _leak():
    held = []
    while True:
        held.append(bytearray(b"x" * (1536 << 10)))
        time.sleep(1.0)
threading.Thread(target=_leak, daemon=True).start()
'''


def _soak(report: Path, minutes: str) -> tuple[int, dict]:
    rc = bench_soak.main(["--minutes", minutes, "--sample-every", "3", "--warmup", "0.1", "--source", "stdin",
                          "--fps", "5", "--max-rss-growth", README_MAX_RSS_GROWTH, "--report", str(report)])
    return rc, json.loads(report.read_text())


def test_short_soak_samples_memory_and_queues_and_loses_no_event(tmp_path: Path) -> None:
    rc, r = _soak(tmp_path / "soak.json", "0.35")
    assert len(r["samples"]) >= 5 and all(s["rss_mb"] > 0 for s in r["samples"])
    assert all(set(s["queues"]) == {"capture", "render", "hooks"} for s in r["samples"])
    assert r["queue_max"] <= 4  # the file-like source's bounded queue
    assert r["summary"]["events"] > 0 and r["dropped_events"] == 0 and r["unended_gestures"] == 0
    assert r["summary"]["stopped_by"] == "SIGINT"
    assert r["rss_ok"] and r["rss_growth_pct"] < 5, r["rss_growth_pct"]  # the memory check, at its limit
    assert rc == 0


def test_a_leaking_run_fails_the_memory_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sitecustomize.py").write_text(LEAK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    # the run is a child process: only it leaks
    rc, r = _soak(tmp_path / "soak.json", "0.3")
    print(f"planted leak: RSS {r['rss_start_mb']} -> {r['rss_end_mb']} MB ({r['rss_growth_pct']:+.2f} %)")
    assert r["rss_growth_pct"] >= 8 and not r["rss_ok"]
    assert r["queue_ok"] and r["dropped_events"] == 0  # memory is the only thing wrong with it
    assert rc == 1
