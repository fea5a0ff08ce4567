#!/usr/bin/env bash
# The README's first command: install into .venv and run the main job on the shipped defaults:
# the project's one-stage gesture detector (assets/models/gesture_detector.onnx, fine-tuned here
# from the HaGRID authors' hand detector) on 18 real HaGRID photos (assets/hagrid-sample), with the
# HaGRID authors' two-stage pair as the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -e ".[dev,tflite,train,quantize]"  # everything the tests need: runtime + every stage
OUT=${1:-runs/demo}
mkdir -p "$OUT"
MODEL=assets/models/gesture_detector.onnx
DATA=assets/hagrid-sample
echo "== accuracy of the default gesture detector on the shipped HaGRID sample"
.venv/bin/hagrid-edge eval --model "$MODEL" --data "$DATA" --split val
echo "== the reference: the HaGRID authors' hand detector + crop classifier on the same photos"
.venv/bin/hagrid-edge eval --model assets/models/hand_detector.onnx --classifier assets/models/crops_classifier.onnx \
    --data "$DATA" --split val
echo "== live pipeline over the sample photos: gesture events and an annotated video"
.venv/bin/hagrid-edge run --engine "$MODEL" --source "$DATA/hagrid_dataset_512" \
    --headless --events "$OUT/events.jsonl" --output "$OUT/annotated.mp4"
echo "events: $OUT/events.jsonl   video: $OUT/annotated.mp4"
