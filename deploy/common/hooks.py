"""``--on-gesture`` hooks: a command or a Python ``module:function`` run on each gesture start.

Hooks never stall inference and never hold a run's end hostage:
- a worker thread, fed by a small bounded queue, starts them; when the queue is full an event's
  hooks are skipped (counted, logged);
- at most ``max_running`` hooks run at once; the worker waits for a free slot;
- each hook gets ``timeout`` seconds: a command runs in its own process group (``sh -c 'a; b'``
  included), which is sent SIGTERM and then SIGKILL at the limit; a Python function cannot be
  stopped, so one past its limit is logged and keeps its slot until it returns;
- a command's stdout goes to the run's stderr, never into ``--events -``;
- at the end of a run queued hooks still start and running ones may finish for ``SHUTDOWN_GRACE_S``,
  then every process group still running is killed: a run's shutdown waits for hooks that long at most.
Every skip, kill and failure (an exception, ``SystemExit``, a non-zero exit status) is logged and
counted in ``stats``, which the run summary reports.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hagrid_edge.errors import HagridEdgeError

if TYPE_CHECKING:  # the CLI parser reads this module's defaults without numpy
    from hagrid_edge.deploy.common.debounce import GestureEvent

log = logging.getLogger("hagrid_edge.run")

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
HOOK_TIMEOUT_S = 10.0  # per hook call, default of --hook-timeout
MAX_RUNNING = 4  # hooks running at once, default of --max-hooks
QUEUE_SIZE = 64  # gesture starts waiting for their hooks
SHUTDOWN_GRACE_S = 1.0  # what the end of a run grants hooks before killing them
TERM_GRACE_S = 0.3  # between SIGTERM and SIGKILL of a hook's process group
_POLL_S = 0.05


def resolve_hook(text: str) -> Callable[[dict], object] | list[str]:
    """``module:function`` -> the callable; anything else -> a command line (argv list)."""
    if _CALLABLE.match(text):
        module_name, func_name = text.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise HagridEdgeError(f"--on-gesture {text}: cannot import {module_name} ({e})") from None
        except BaseException as e:  # noqa: BLE001 - a user's module that fails at import (even sys.exit)
            raise HagridEdgeError(f"--on-gesture {text}: importing {module_name} failed "
                                  f"({type(e).__name__}: {e})") from None
        func = getattr(module, func_name, None)
        if not callable(func):
            raise HagridEdgeError(f"--on-gesture {text}: {module_name} has no function {func_name}")
        return func
    try:
        argv = shlex.split(text)
    except ValueError as e:  # an unbalanced quote
        raise HagridEdgeError(f"--on-gesture {text}: cannot split it into a command line ({e})") from None
    if not argv or shutil.which(argv[0]) is None:
        raise HagridEdgeError(f"--on-gesture {text}: no such command (or module:function)")
    return argv


@dataclass
class HookStats:
    started: int = 0  # hook calls started
    skipped: int = 0  # hook calls that never started: queue full, or the run ended first
    timed_out: int = 0  # past the time limit: a command killed, a Python function left running
    killed_at_end: int = 0  # commands still running when the run's end granted them no more time
    failed: int = 0  # raised (SystemExit included) or exited non-zero
    _not_started: int = 0  # of ``skipped``: still queued when the run ended (logged once, at the end)


@dataclass
class _Running:
    name: str
    deadline: float
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    overdue: bool = False  # a Python hook past its limit (logged once)

    def done(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        return self.thread is not None and not self.thread.is_alive()


def _hook_stdout() -> int:
    """Hook commands write to the run's stderr (fd 2), never to stdout, which may carry ``--events -``."""
    try:
        os.fstat(2)
        return 2
    except OSError:
        return subprocess.DEVNULL


class Hooks:
    """Runs hooks on gesture-start events; see the module docstring for the limits.

    A command gets the event in its environment (``HAGRID_EDGE_GESTURE``, ``HAGRID_EDGE_EVENT`` as
    JSON); a Python callable gets the event dict.
    """

    def __init__(self, specs: list[str], timeout: float = HOOK_TIMEOUT_S, max_running: int = MAX_RUNNING,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.hooks = [(spec, resolve_hook(spec)) for spec in specs]
        self.timeout, self.max_running = timeout, max_running
        self.stats = HookStats()
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=queue_size)
        self._running: list[_Running] = []
        self._lock = threading.Lock()  # counters and the running list
        self._reaping = threading.Lock()  # one reaper at a time (the worker, or close() once it gave up on it)
        self._end_by: float | None = None  # set when the run ends: no hook starts after this moment
        self._closed = False
        self._stdout = _hook_stdout()
        self._behind, self._next_behind_log = 0, 0.0  # skipped while the queue was full, not logged yet
        self._thread = threading.Thread(target=self._work, name="hooks", daemon=True)
        if self.hooks:
            self._thread.start()

    # ---- the run's side -------------------------------------------------------------------------
    def fire(self, event: GestureEvent) -> None:
        if not self.hooks or event.kind != "start" or self._end_by is not None:
            return
        try:
            self._queue.put_nowait(event.to_dict())
        except queue.Full:
            self._count("skipped", len(self.hooks))
            self._behind += 1
            now = time.monotonic()
            if now >= self._next_behind_log:  # one line per 10 s at most, however many events are skipped
                self._next_behind_log = now + 10.0
                log.warning("hooks are behind (%d events waiting, %d hooks running): skipped the hooks of %d "
                            "gesture start(s), the last %s of track %d", self._queue.qsize(), len(self._running),
                            self._behind, event.gesture, event.track)
                self._behind = 0

    @property
    def pending(self) -> int:
        """Events waiting for their hooks."""
        return self._queue.qsize()

    @property
    def skipped(self) -> int:
        return self.stats.skipped

    def begin_end(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """The run is ending: queued and running hooks have ``grace`` seconds from now (the rest of the
        shutdown overlaps with it); ``close`` then kills what still runs."""
        if self._end_by is None:
            self._end_by = time.monotonic() + grace

    def close(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Give queued and running hooks ``grace`` seconds (from ``begin_end``, if called), then kill what
        still runs; returns within about ``grace + TERM_GRACE_S`` seconds whatever the hooks do."""
        if not self.hooks or self._closed:
            return
        self._closed = True
        self.begin_end(grace)
        assert self._end_by is not None
        try:
            self._queue.put(None, timeout=max(self._end_by - time.monotonic(), 0.0))
        except queue.Full:
            pass  # the worker sees the deadline and stops anyway
        self._thread.join(max(self._end_by - time.monotonic(), 0.0) + 0.1)
        while self._running and time.monotonic() < self._end_by:
            self._reap()
            time.sleep(_POLL_S)
        with self._reaping, self._lock:
            left, self._running = list(self._running), []
        doomed = []
        for run in left:
            if run.done():
                self._finished(run)
            elif run.proc is not None:
                self._count("killed_at_end")
                log.warning("hook %s still running at the end of the run: killed its process group", run.name)
                doomed.append(run.proc)
            else:
                log.warning("hook %s still running at the end of the run: left behind (a Python function "
                            "cannot be stopped)", run.name)
        _kill_groups(doomed)
        while True:  # events that never got their hooks
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                self._count("skipped", len(self.hooks))
                self._count("_not_started", len(self.hooks))
        if self._behind:
            log.warning("hooks were behind: skipped the hooks of %d more gesture start(s)", self._behind)
        if self.stats._not_started:
            log.warning("the run ended before %d hook calls could start (the hooks were still busy): skipped",
                        self.stats._not_started)

    # ---- the worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            self._reap()
            try:
                event = self._queue.get(timeout=_POLL_S * 2)
            except queue.Empty:
                continue
            if event is None:
                return
            for name, hook in self.hooks:
                if not self._wait_for_slot():
                    self._count("skipped")
                    self._count("_not_started")
                    continue
                self._start(name, hook, event)

    def _wait_for_slot(self) -> bool:
        """Block until fewer than ``max_running`` hooks run; False once the run's end allows no new start."""
        while True:
            if self._end_by is not None and time.monotonic() >= self._end_by:
                return False
            self._reap()
            if len(self._running) < self.max_running:
                return True
            time.sleep(_POLL_S)

    def _start(self, name: str, hook: Callable[[dict], object] | list[str], event: dict) -> None:
        deadline = time.monotonic() + self.timeout
        if isinstance(hook, list):
            env = {**os.environ, "HAGRID_EDGE_GESTURE": event["gesture"], "HAGRID_EDGE_EVENT": json.dumps(event)}
            try:
                proc = subprocess.Popen(hook, env=env, stdin=subprocess.DEVNULL, stdout=self._stdout,
                                        start_new_session=True)  # its own process group, killed as one
            except OSError as e:
                self._count("failed")
                log.warning("hook %s failed to start: %s", name, e)
                return
            run = _Running(name, deadline, proc=proc)
        else:
            thread = threading.Thread(target=self._call, args=(name, hook, event), name=f"hook {name}", daemon=True)
            run = _Running(name, deadline, thread=thread)
            thread.start()
        self._count("started")
        with self._lock:
            self._running.append(run)

    def _call(self, name: str, hook: Callable[[dict], object], event: dict) -> None:
        try:
            hook(event)
        except BaseException as e:  # noqa: BLE001 - SystemExit too: a user's hook must not end the run silently
            self._count("failed")
            log.warning("hook %s raised %s: %s", name, type(e).__name__, e)

    def _reap(self) -> None:
        """Forget finished hooks (counting failures); kill commands past their limit."""
        with self._reaping:
            self._reap_locked()

    def _reap_locked(self) -> None:
        now = time.monotonic()
        with self._lock:
            running = list(self._running)
        keep, doomed = [], []
        for run in running:
            if run.done():
                self._finished(run)
            elif now >= run.deadline and run.proc is not None:
                self._count("timed_out")
                log.warning("hook %s still running after %.1f s: killed its process group", run.name, self.timeout)
                doomed.append(run.proc)
            else:
                if now >= run.deadline and not run.overdue:
                    run.overdue = True
                    self._count("timed_out")
                    log.warning("hook %s still running after %.1f s; a Python function cannot be stopped, it "
                                "keeps one of the %d hook slots until it returns", run.name, self.timeout,
                                self.max_running)
                keep.append(run)
        _kill_groups(doomed)
        with self._lock:
            self._running = keep + [r for r in self._running if r not in running]

    def _finished(self, run: _Running) -> None:
        if run.proc is not None and run.proc.returncode not in (0, None):
            self._count("failed")
            log.warning("hook %s exited with status %d", run.name, run.proc.returncode)

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + n)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each hook's process group, SIGKILL to the groups whose leader has not exited within
    ``TERM_GRACE_S`` (all at once: ``TERM_GRACE_S`` in all, however many), SIGKILL also to what a leader
    that did exit left in its group."""
    if not procs:
        return
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(0.1)
        except subprocess.TimeoutExpired:
            pass
