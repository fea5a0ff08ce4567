"""Inside the emulated Pi: the deployed pipeline on real frames, with a marker around every stage.

The instruction-count plugin (deploy/rpi/insn_plugin/insn_count.c) writes the guest's executed
instruction count each time this process makes the marker system call; ``benchmarks/emulate.py``
turns the marker lines into instructions per frame for pre-processing, inference and
post-processing. The frame goes through the same ``load_pipeline`` objects as ``run``, ``eval``
and ``bench``; only the backends' ``infer`` (and, for two stages, the detector) are wrapped with
markers, so the stage boundaries are the runtime calls themselves.

Run as ``python -m hagrid_edge.benchmarks.emulate_counts REQUEST.json OUT.json`` (by the host side).
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any

# Keep equal to MARKER_SYSCALL in deploy/rpi/insn_plugin/insn_count.c: a number no kernel implements,
# so outside the plugin the call is a harmless ENOSYS.
MARKER_SYSCALL = 0x4845
# Marker kinds (low 8 bits of a tag); the tag also carries the target and frame index.
FRAME_START, INFER_START, INFER_END, STAGE_END, FRAME_END, EMPTY = 1, 2, 3, 4, 5, 6
EMPTY_PAIRS = 5  # back-to-back markers: the cost of one marker call, subtracted from every segment


def tag(target: int, frame: int, kind: int) -> int:
    return (target << 24) | (frame << 8) | kind


def untag(value: int) -> tuple[int, int, int]:
    return value >> 24, (value >> 8) & 0xFFFF, value & 0xFF


class Marker:
    """The marker system call, through libc's ``syscall`` (no compiled code of our own in the guest)."""

    def __init__(self) -> None:
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._syscall.argtypes = [ctypes.c_long, ctypes.c_ulong]
        self._syscall.restype = ctypes.c_long

    def __call__(self, value: int) -> None:
        self._syscall(MARKER_SYSCALL, value)


class _MarkedInfer:
    """A backend's ``infer`` with a marker before and after the runtime call."""

    def __init__(self, infer: Any, mark: Marker, state: dict[str, int]) -> None:
        self._infer, self._mark, self._state = infer, mark, state

    def __call__(self, x: Any) -> Any:
        self._mark(tag(self._state["target"], self._state["frame"], INFER_START))
        out = self._infer(x)
        self._mark(tag(self._state["target"], self._state["frame"], INFER_END))
        return out


class _MarkedStage:
    """The first stage of a two-stage pipeline, with a marker once its post-processing is done."""

    def __init__(self, stage: Any, mark: Marker, state: dict[str, int]) -> None:
        self._stage, self._mark, self._state = stage, mark, state

    def __call__(self, *args: Any) -> Any:
        out = self._stage(*args)
        self._mark(tag(self._state["target"], self._state["frame"], STAGE_END))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stage, name)


def _pipeline(target: dict[str, Any], threads: int, mark: Marker, state: dict[str, int]) -> tuple[Any, list, str]:
    """(frame function, [(path, spec)], kind) for one target, its runtime calls marked."""
    from hagrid_edge.deploy.common.backend import open_backend
    from hagrid_edge.pipeline import CropClassifier, FrameClassifier, TwoStage, load_pipeline
    from hagrid_edge.spec import resolve_spec

    model, classifier = target["model"], target.get("classifier")
    if classifier is None and resolve_spec(model).task == "classifier":
        backend = open_backend(model, threads=threads)
        backend.infer = _MarkedInfer(backend.infer, mark, state)
        if backend.spec.crop:
            clf = CropClassifier(backend)
            return (lambda frame, box: clf(frame, box)), [(model, backend.spec)], "classifier"
        full = FrameClassifier(backend)
        return (lambda frame, box: full(frame)), [(model, backend.spec)], "classifier"
    pipe = load_pipeline(model, classifier, threads=threads)
    if isinstance(pipe, TwoStage):
        for stage in (pipe.detector, pipe.classifier):
            stage.backend.infer = _MarkedInfer(stage.backend.infer, mark, state)
        pipe.detector = _MarkedStage(pipe.detector, mark, state)
        return ((lambda frame, box: pipe(frame)), [(model, pipe.detector.spec), (classifier, pipe.classifier.spec)],
                "two-stage")
    pipe.backend.infer = _MarkedInfer(pipe.backend.infer, mark, state)
    return (lambda frame, box: pipe(frame)), [(model, pipe.spec)], "detector"


def count(request: dict[str, Any]) -> dict[str, Any]:
    """Run every target of ``request`` over its frames with markers; facts for the host's rows."""
    import cv2

    from hagrid_edge.benchmarks.machine import describe
    from hagrid_edge.benchmarks.suite import _artifact_facts
    from hagrid_edge.data.annotations import load_split
    from hagrid_edge.images import read_rgb

    threads = int(request["threads"])
    cv2.setNumThreads(threads)
    samples = load_split(request["data"], request["split"])[: request["frames"]]
    frames = [read_rgb(s.image_path) for s in samples]
    boxes = [s.boxes_xyxy(f.shape[1], f.shape[0])[:1] for s, f in zip(samples, frames)]  # noqa: B905
    mark = Marker()
    state = {"target": 0, "frame": 0}
    results = []
    for t, target in enumerate(request["targets"]):
        state.update(target=t, frame=0)
        try:
            run, specs, kind = _pipeline(target, threads, mark, state)
            for _ in range(EMPTY_PAIRS):
                mark(tag(t, 0, EMPTY))
                mark(tag(t, 0, EMPTY))
            for i in range(request["warmup"] + len(frames)):
                state["frame"] = i
                j = i % len(frames)
                mark(tag(t, i, FRAME_START))
                run(frames[j], boxes[j])
                mark(tag(t, i, FRAME_END))
            results.append({"kind": kind, "artifacts": [_artifact_facts(Path(p), s) for p, s in specs]})
        except Exception as e:  # one failing artifact becomes an error row, the others still count
            results.append({"error": f"{type(e).__name__}: {e}".splitlines()[0]})
    return {"machine": describe(request.get("label")), "frames": len(frames), "targets": results}


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    Path(argv[1]).write_text(json.dumps(count(request)) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
