"""Shared fixtures: the real HaGRID data and models in shared/.

Outside this workplace shared/ may be absent: tests that need it skip with the reason. Under CI
(``CI=true``) its absence is a failure, so a green CI always means the real-data tests ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from hagrid_edge.paths import SHARED_ENV, shared_root


def missing(msg: str) -> NoReturn:
    """Skip a test whose prerequisite this machine lacks; under CI (``CI=true``) fail instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"under CI this must be present: {msg}")
    pytest.skip(msg)


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
