#!/usr/bin/env bash
# Renew every lock from setup.cfg (one command; needs PyPI). uv resolves for each platform and Python:
#   requirements/x86_64-py311.txt   what .ci/run and scripts/demo.sh install (runtime + every extra)
#   requirements/aarch64-py38.txt   the Jetson runtime on JetPack 5 (Python 3.8), [jetson] extra
#   requirements/aarch64-py310.txt  the Jetson runtime on JetPack 6 (Python 3.10), [jetson] extra
#   deploy/rpi/requirements-pi.txt  the Pi runtime (aarch64, Python 3.11), constrained by the x86 lock,
#                                   so every package the two share has one version (tests/test_lock.py).
# What is held by hand (OpenCV's one release for every platform) is in requirements/constraints.in.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
compile() { "$uv" pip compile --quiet --no-header --upgrade -c requirements/constraints.in "$@"; }
compile setup.cfg --extra dev --extra tflite --extra train --extra quantize --extra mqtt \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements/x86_64-py311.txt
compile setup.cfg --extra jetson --python-version 3.8 --python-platform aarch64-manylinux_2_28 \
    -o requirements/aarch64-py38.txt
compile setup.cfg --extra jetson --python-version 3.10 --python-platform aarch64-manylinux_2_28 \
    -o requirements/aarch64-py310.txt
compile deploy/rpi/requirements-pi.in -c requirements/x86_64-py311.txt \
    --python-version 3.11 --python-platform aarch64-manylinux_2_28 -o deploy/rpi/requirements-pi.txt
