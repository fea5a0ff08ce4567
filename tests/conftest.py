"""Shared fixtures: the real HaGRID data and models in shared/.

Outside this workplace shared/ may be absent: tests that need it skip with the reason. Under CI
(``CI=true``) its absence is a failure, so a green CI always means the real-data tests ran.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from hagrid_edge.paths import SHARED_ENV, shared_root


def missing(msg: str) -> NoReturn:
    """Skip a test whose prerequisite this machine lacks; under CI (``CI=true``) fail instead."""
    if under_ci():
        pytest.fail(f"under CI this must be present: {msg}")
    pytest.skip(msg)


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def need_module(name: str, why: str) -> ModuleType:
    """Import ``name`` for a test or a whole test module; where it is not installed the test (or module)
    skips, and under CI (``CI=true``) it fails: an extra CI installs never makes a module vanish."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        msg = f"{name} cannot be imported ({e}): {why}"
        if under_ci():
            pytest.fail(f"under CI this must be present: {msg}", pytrace=False)
        pytest.skip(msg, allow_module_level=True)


def _need(relative: str) -> Path:
    path = shared_root() / relative
    if not path.exists():
        missing(f"{path} is missing (set {SHARED_ENV} to the shared data/models folder)")
    return path


@pytest.fixture(scope="session")
def mini_root() -> Path:
    """hagrid512-mini: real HaGRID 2.0-layout images with train/val/subsample annotations."""
    return _need("data/hagrid512-mini")


@pytest.fixture(scope="session")
def val_full_root() -> Path:
    """The authors' full val annotations (53,982 entries, no images)."""
    return _need("data/hagrid-annotations-val-full")


@pytest.fixture(scope="session")
def crops_root() -> Path:
    return _need("data/hagrid-crops")


@pytest.fixture(scope="session")
def hand_detector() -> Path:
    return _need("models/hagrid-hand-detector/hand_detector.onnx")


@pytest.fixture(scope="session")
def crop_classifier() -> Path:
    return _need("models/hagrid-hand-detector/crops_classifier.onnx")


@pytest.fixture(scope="session")
def mediapipe_dir() -> Path:
    return _need("models/mediapipe-hands")


@pytest.fixture(scope="session")
def pair_val_direct(mini_root: Path, hand_detector: Path, crop_classifier: Path) -> dict[str, dict[str, float]]:
    """The authors' pair (as shipped) on all of hagrid512-mini val, scored by ``coco_direct`` (pycocotools on
    the raw annotation files, apart from hagrid_edge's scoring): the figure eval and bench must reproduce."""
    from coco_direct import hagrid_map

    from hagrid_edge.data.annotations import load_split
    from hagrid_edge.evaluate import EVAL_SCORE_THRESHOLD, run_detector
    from hagrid_edge.pipeline import load_pipeline

    samples = load_split(mini_root, "val")
    dets, _ = run_detector(load_pipeline(hand_detector, crop_classifier, score_threshold=EVAL_SCORE_THRESHOLD),
                           samples, progress=False)
    photos = [(s.gesture, s.image_id, s.image_path) for s in samples]
    return {task: hagrid_map(mini_root, "val", photos, dets, task) for task in ("gestures", "hands")}
