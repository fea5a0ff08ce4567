"""IoU tracker and N-of-M / K debounce: per-frame labels in, gesture events out."""

from __future__ import annotations

import numpy as np
import pytest

from hagrid_edge.deploy.common.debounce import DebounceConfig, Debouncer
from hagrid_edge.deploy.common.gestures import Gestures
from hagrid_edge.deploy.common.tracker import IouTracker
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.processing import Detections

HAND_A = np.array([100, 100, 200, 220], np.float32)
HAND_B = np.array([400, 120, 480, 230], np.float32)


def test_tracker_keeps_ids_while_boxes_overlap() -> None:
    tr = IouTracker(iou_threshold=0.3, max_age=2)
    ids, _ = tr.update(np.stack([HAND_A, HAND_B]))
    assert ids == [1, 2]
    ids, _ = tr.update(np.stack([HAND_B + 6, HAND_A + 8]))  # order swapped, both moved a little
    assert ids == [2, 1]
    ids, _ = tr.update(np.stack([HAND_A + 300]))  # far from both: a new hand
    assert ids == [3]
    lost = [[t.id for t in tr.update(np.zeros((0, 4)))[1]] for _ in range(3)]
    assert lost == [[], [1, 2], [3]]  # each dropped once unseen for 3 frames > max_age 2
    assert tr.tracks == []


def _labels(deb: Debouncer, labels: list[str | None]) -> list[tuple[int, str, str]]:
    out = []
    for frame, label in enumerate(labels):
        for e in deb.update(label, 0.9, HAND_A if label else None, frame, float(frame)):
            out.append((frame, e.kind, e.gesture))
    return out


def test_n_of_m_starts_and_k_ends() -> None:
    deb = Debouncer(1, DebounceConfig(n=3, m=5, k=2))
    seq = ["palm", None, "palm", "no_gesture", "palm", "palm", None, None, "fist"]
    assert _labels(deb, seq) == [(4, "start", "palm"), (7, "end", "palm")]


def test_flicker_below_n_never_starts_and_switch_ends_previous() -> None:
    deb = Debouncer(1, DebounceConfig(n=3, m=4, k=10))
    assert _labels(deb, ["like", None, "like", None, "like", None]) == []
    deb = Debouncer(2, DebounceConfig(n=2, m=3, k=10))
    events = _labels(deb, ["palm", "palm", "fist", "fist", "fist"])
    assert events == [(1, "start", "palm"), (3, "end", "palm"), (3, "start", "fist")]
    assert [e.kind for e in deb.finish(5, 5.0)] == ["end"]


def test_gestures_end_when_track_lost() -> None:
    g = Gestures(DebounceConfig(2, 2, 50), track_max_age=1)
    dets = Detections(HAND_A[None], np.array([0.9], np.float32), np.array([0]), ["ok"])
    events = []
    for frame in range(3):
        events += g.update(dets, frame, float(frame), [{"presence": 0.5 + frame / 10}])[1]
    for frame in range(3, 6):
        events += g.update(Detections(), frame, float(frame))[1]
    assert [(e.kind, e.gesture, e.track) for e in events] == [("start", "ok", 1), ("end", "ok", 1)]
    # each event carries the hand's extras (e.g. landmarks) from the last frame the hand was seen
    assert [e.to_dict()["presence"] for e in events] == [0.6, 0.7]


def test_bad_config() -> None:
    with pytest.raises(HagridEdgeError, match="N <= M"):
        DebounceConfig(n=4, m=3)
    with pytest.raises(HagridEdgeError, match="K >= 1"):
        DebounceConfig(k=0)


def test_summary_state_stays_bounded() -> None:
    """A run as a service: per-stage samples keep a fixed window, events are counted, not kept."""
    from hagrid_edge.deploy.common.debounce import GestureEvent
    from hagrid_edge.deploy.common.summary import WINDOW, Summary

    s = Summary("usb://0")
    for k in range(3 * WINDOW):
        s.add("infer", 0.001 * (k % 10))
        s.count_events([GestureEvent("start" if k % 2 == 0 else "end", "palm", 1, k, 0.0, 0.9, [0, 0, 1, 1])])
    st = s.stages["infer"]
    assert len(st.recent) == WINDOW and st.count == 3 * WINDOW
    assert s.percentiles_ms()["infer"]["mean"] == pytest.approx(4.5)
    assert s.events == 3 * WINDOW and s.starts == {"palm": 3 * WINDOW // 2}


def test_a_hand_the_detector_gives_two_gestures_is_one_hand_in_a_run(mini_root) -> None:
    """The one-stage detector's NMS is per gesture, so on some real photos it boxes one hand twice, with two
    gestures, at its operating threshold. A run keeps the likelier one: without that, the tracker takes the
    second box for a second hand and starts a second gesture on it."""
    from hagrid_edge.data.annotations import load_split
    from hagrid_edge.deploy.common.runner import Models
    from hagrid_edge.deploy.common.summary import Summary
    from hagrid_edge.images import read_rgb
    from hagrid_edge.paths import REPO_ROOT
    from hagrid_edge.pipeline import load_pipeline
    from hagrid_edge.processing import box_iou

    detector = load_pipeline(REPO_ROOT / "assets" / "models" / "gesture_detector.onnx", threads=1)
    models = Models(detector, same_hand_iou=0.5)
    doubled = 0
    for sample in load_split(mini_root, "val"):
        frame = read_rgb(sample.image_path)
        raw = detector(frame)
        iou = box_iou(raw.boxes, raw.boxes) - np.eye(len(raw))
        if not (iou > 0.5).any():
            continue
        doubled += 1
        kept, _ = models(frame, Summary("photo"))
        assert len(kept) < len(raw) and not (box_iou(kept.boxes, kept.boxes) - np.eye(len(kept)) > 0.5).any()
        assert kept.scores.max() == raw.scores.max() and set(kept.labels) <= set(raw.labels)
        tracks, starts = {}, {}
        for run, dets in (("raw", raw), ("kept", kept)):  # the photo held still for 4 frames
            g = Gestures(DebounceConfig(n=2, m=3, k=2))
            updates = [g.update(dets, i, float(i)) for i in range(4)]
            tracks[run] = {t for ids, _ in updates for t in ids}
            starts[run] = [e.gesture for _, events in updates for e in events if e.kind == "start"]
        assert len(tracks["kept"]) == len(kept) < len(tracks["raw"]) == len(raw)
        assert len(starts["kept"]) <= len(starts["raw"]) and len(starts["kept"]) <= len(kept)
    assert doubled >= 3, doubled
