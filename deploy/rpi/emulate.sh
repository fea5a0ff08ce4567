#!/usr/bin/env bash
# Run a command on an emulated Raspberry Pi userland (Debian 12 arm64, Python 3.11, aarch64 wheels)
# under qemu-aarch64 user mode, the Pi's CPU pinned:
#   deploy/rpi/emulate.sh --cpu pi5|pi4 -- hagrid-edge eval --model M.tflite --data ROOT --json
# Builds and caches the userland on first use (see deploy/rpi/README.md); $PYTHON picks the host Python
# that has hagrid-edge installed (default: the repository's .venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m hagrid_edge.deploy.rpi.emulate "$@"
