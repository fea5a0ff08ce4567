#!/usr/bin/env bash
# CI lane: the main job's Pi 5 form (the one-stage gesture detector's INT8 TFLite) on an emulated
# Raspberry Pi 5 (Debian 12 arm64, Python 3.11, aarch64 wheels, qemu-aarch64 -cpu cortex-a76) against
# x86, both measured here in the same run:
#   hagrid-edge eval on hagrid512-mini val (gestures mAP50-95 and mAP50 equal within 0.05 points, at
#   least 45 mAP50-95 on both) and hagrid-edge run over assets/hagrid-sample/ (the same gesture events,
#   scores within 0.001, boxes within 0.5 px, at least one event per photo).
# usage: deploy/rpi/ci_lane.sh [EVAL_LIMIT]   (default: $PI_LANE_LIMIT, else all 167 val images;
#        0 = all).
# The first run builds the emulated userland (about a minute, cached in ~/.cache/hagrid-edge).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-.venv/bin/python}
export PYTHON=$python
data=${HAGRID_EDGE_SHARED:-../shared}/data/hagrid512-mini
model=assets/models/gesture_detector_int8.tflite
limit=${1:-${PI_LANE_LIMIT:-0}}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

eval_args=(eval --model "$model" --task gestures --data "$data" --split val --threads 1 --json)
run_args=(run --engine "$model" --source assets/hagrid-sample/ --headless --threads 1)
[ "$limit" = 0 ] || eval_args+=(--limit "$limit")

start=$SECONDS
"$python" -m hagrid_edge.cli "${eval_args[@]}" > "$out/x86-eval.json"
"$python" -m hagrid_edge.cli "${run_args[@]}" --events "$out/x86-events.jsonl" > /dev/null
deploy/rpi/emulate.sh --cpu pi5 --build-only
built=$SECONDS
deploy/rpi/emulate.sh --cpu pi5 -- hagrid-edge "${eval_args[@]}" > "$out/pi5-eval.json"
deploy/rpi/emulate.sh --cpu pi5 -- hagrid-edge "${run_args[@]}" --events "$out/pi5-events.jsonl" > /dev/null
"$python" -m hagrid_edge.deploy.rpi.compare "$out/x86-eval.json" "$out/pi5-eval.json" \
    "$out/x86-events.jsonl" "$out/pi5-events.jsonl" --min-map50-95 45 --min-events 18
echo "pi lane: $((SECONDS - start)) s ($((SECONDS - built)) s on the emulated Pi 5)" >&2
