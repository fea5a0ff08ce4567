"""``--on-gesture`` hooks: a command or a Python ``module:function`` run on each gesture start.

Hooks run on a worker thread fed by a small bounded queue, so a slow hook never stalls inference;
when the queue is full an event's hooks are skipped with a warning.
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
import subprocess
import threading
from collections.abc import Callable

from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.errors import HagridEdgeError

log = logging.getLogger("hagrid_edge.run")

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve_hook(text: str) -> Callable[[dict], object] | list[str]:
    """``module:function`` -> the callable; anything else -> a command line (argv list)."""
    if _CALLABLE.match(text):
        module_name, func_name = text.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise HagridEdgeError(f"--on-gesture {text}: cannot import {module_name} ({e})") from None
        func = getattr(module, func_name, None)
        if not callable(func):
            raise HagridEdgeError(f"--on-gesture {text}: {module_name} has no function {func_name}")
        return func
    argv = shlex.split(text)
    if not argv or shutil.which(argv[0]) is None:
        raise HagridEdgeError(f"--on-gesture {text}: no such command (or module:function)")
    return argv


class Hooks:
    """Runs hooks on gesture-start events on a worker thread.

    A command gets the event in its environment (``HAGRID_EDGE_GESTURE``, ``HAGRID_EDGE_EVENT`` as
    JSON); a Python callable gets the event dict.
    """

    def __init__(self, specs: list[str]) -> None:
        self.hooks = [resolve_hook(s) for s in specs]
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=64)
        self._procs: list[subprocess.Popen] = []
        self.skipped = 0  # events whose hooks did not run because the queue was full
        self._thread = threading.Thread(target=self._run, name="hooks", daemon=True)
        if self.hooks:
            self._thread.start()

    def fire(self, event: GestureEvent) -> None:
        if not self.hooks or event.kind != "start":
            return
        try:
            self._queue.put_nowait(event.to_dict())
        except queue.Full:
            self.skipped += 1
            log.warning("hooks are behind: skipped the %s event of track %d", event.gesture, event.track)

    @property
    def pending(self) -> int:
        """Events waiting for their hooks."""
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            for hook in self.hooks:
                try:
                    if isinstance(hook, list):
                        env = {**os.environ, "HAGRID_EDGE_GESTURE": event["gesture"],
                               "HAGRID_EDGE_EVENT": json.dumps(event)}
                        self._procs.append(subprocess.Popen(hook, env=env, stdin=subprocess.DEVNULL))
                    else:
                        hook(event)
                except Exception as e:  # a user's hook must not end the run
                    log.warning("hook %s failed: %s", hook, e)
            self._procs = [p for p in self._procs if p.poll() is None]

    def close(self, timeout: float = 10.0) -> None:
        """Let queued events run and started commands finish (``timeout`` s each at most)."""
        if not self.hooks:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("hooks still busy after %.0f s; left behind", timeout)
            return
        self._thread.join(timeout)
        for p in self._procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("hook command %s still running; left behind", p.args)
