"""Resident memory of one artifact, measured in a process of its own.

Peak RSS is a per-process high-water mark, so every artifact is benchmarked in a fresh spawned
process: its peak cannot be inflated by an artifact measured before it, and a runtime that crashes
(a segfault in a native library) ends that process, not the bench.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import sys
import traceback
from collections.abc import Callable
from typing import Any

MIB = 1024 * 1024


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; elsewhere the peak as an upper bound)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _child(func: Callable[..., Any], args: tuple, conn: Any) -> None:
    try:
        conn.send(("ok", func(*args)))
    except BaseException as e:  # every failure becomes a message for the parent's error row
        from hagrid_edge.errors import HagridEdgeError

        detail = str(e) if isinstance(e, HagridEdgeError) else (
            f"{type(e).__name__}: {e} ({traceback.extract_tb(e.__traceback__)[-1].name})")
        conn.send(("error", detail.strip().splitlines()[0] if detail.strip() else type(e).__name__))
    finally:
        conn.close()


def run_isolated(func: Callable[..., Any], args: tuple, timeout_s: float | None = None) -> tuple[str, Any]:
    """Run ``func(*args)`` in a fresh spawned process: ("ok", result) or ("error", one-line reason).

    ``func`` must be importable (a module-level function) and its result picklable.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(func, args, child), daemon=True)
    proc.start()
    child.close()
    outcome: tuple[str, Any] | None = None
    try:
        if parent.poll(timeout_s):
            outcome = parent.recv()
        else:
            proc.kill()
            outcome = ("error", f"timed out after {timeout_s:.0f} s")
    except EOFError:  # the child died without sending anything
        pass
    finally:
        parent.close()
    proc.join(30)
    if outcome is None:
        code = proc.exitcode
        reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        outcome = ("error", f"the benchmark process died ({reason})")
    return outcome
