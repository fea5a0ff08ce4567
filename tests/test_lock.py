"""The locks: one version of every package the x86 CI and the Pi userland share, and this environment
installed from the lock (an OpenCV that drifted in gave the Pi lane other input bytes than x86)."""

from __future__ import annotations

import configparser
import os
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hagrid_edge.deploy.rpi.emulate import REQUIREMENTS as PI_LIST
from hagrid_edge.deploy.rpi.emulate import read_requirements

ROOT = Path(__file__).resolve().parents[1]
X86_LOCK = ROOT / "requirements" / "x86_64-py311.txt"
LOCKS = sorted((ROOT / "requirements").glob("*.txt")) + [PI_LIST]
# The extras each lock is compiled with (scripts/lock.sh), beside install_requires.
EXTRAS = {"x86_64-py311.txt": ("dev", "tflite", "train", "quantize"), "aarch64-py38.txt": ("jetson",),
          "aarch64-py310.txt": ("jetson",), PI_LIST.name: ("rpi",)}


def pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(name): version
            for name, _, version in (r.partition("==") for r in read_requirements(path))}


def setup_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += cfg["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def test_pi_list_and_x86_lock_agree_on_every_shared_package() -> None:
    x86, pi = pins(X86_LOCK), pins(PI_LIST)
    shared = sorted(set(x86) & set(pi))
    assert "opencv-python-headless" in shared and "numpy" in shared
    differ = [f"{name}: x86 {x86[name]}, Pi {pi[name]}" for name in shared if x86[name] != pi[name]]
    assert not differ, "the Pi list drifted from the x86 lock (renew both with scripts/lock.sh): " + "; ".join(differ)


def test_one_opencv_on_every_platform() -> None:
    versions = {path.name: pins(path).get("opencv-python-headless") for path in LOCKS}
    assert len(set(versions.values())) == 1 and None not in versions.values(), versions


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_lock_satisfies_setup_cfg(lock: Path) -> None:
    locked = pins(lock)
    outside = [f"{req.name}=={locked[canonicalize_name(req.name)]} is outside {req}"
               for req in setup_requirements(EXTRAS[lock.name])
               if canonicalize_name(req.name) in locked
               and not req.specifier.contains(locked[canonicalize_name(req.name)], prereleases=True)]
    assert not outside, f"{lock.name}: " + "; ".join(outside)


def test_this_environment_is_the_lock() -> None:
    """CI and the demo install with ``-c requirements/x86_64-py311.txt``; a step without it drifts."""
    if os.environ.get("CI", "").lower() != "true":
        pytest.skip("checks the environment .ci/run installed (CI=true)")
    drift = []
    for name, version in pins(X86_LOCK).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # platform-specific or an extra this environment does not carry
        if installed != version:
            drift.append(f"{name} {installed} (lock {version})")
    assert not drift, "installed packages differ from requirements/x86_64-py311.txt: " + ", ".join(drift)
