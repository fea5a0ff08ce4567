"""The Dockerfiles cannot be built here (no container engine): check what can be checked without one,
that every file they COPY exists in the repository and is let through their .dockerignore."""

from __future__ import annotations

from pathlib import Path

import pytest

from hagrid_edge.paths import REPO_ROOT

DOCKERFILES = sorted(p for p in (REPO_ROOT / "docker").glob("Dockerfile*") if p.suffix != ".dockerignore")


def copied(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            sources += line.split()[1:-1]
    return sources


def admitted(dockerfile: Path) -> set[str]:
    """Top-level names the ignore file lets through (it ignores "*" and re-admits with "!name")."""
    lines = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    assert lines[0] == "*"
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_context(dockerfile: Path) -> None:
    sources = copied(dockerfile)
    assert "setup.cfg" in sources and "hagrid_edge/" in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
        assert Path(source).parts[0] in admitted(dockerfile), f"{dockerfile.name}: {source} is .dockerignored"


def test_dev_image_and_jetpack6_image() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.jetson"]
    assert "ARG L4T_JETPACK=nvcr.io/nvidia/l4t-jetpack:r36." in (REPO_ROOT / "docker" / "Dockerfile.jetson").read_text()


def test_jetson_image_installs_as_the_guide_keeping_jetpacks_numpy_and_opencv() -> None:
    """pip's OpenCV and numpy 2 would hide JetPack's cv2 (GStreamer) and break TensorRT's bindings."""
    text = (REPO_ROOT / "docker" / "Dockerfile.jetson").read_text()
    guide = (REPO_ROOT / "deploy" / "jetson" / "README.md").read_text()
    for line in ("-c deploy/jetson/constraints-jetpack.txt -r deploy/jetson/requirements-board.txt",
                 "install --no-deps"):
        assert line in text and line in guide
    assert "python3-opencv" not in text and "opencv-python" not in text
    assert "numpy<2" in (REPO_ROOT / "deploy" / "jetson" / "constraints-jetpack.txt").read_text().splitlines()
