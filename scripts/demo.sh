#!/usr/bin/env bash
# The README's first command: install into .venv and run the main job on the shipped defaults:
# the HaGRID authors' hand detector (cut to its raw heads, assets/models/hand_detector_cut.onnx) +
# the project's hand-crop gesture classifier (assets/models/gesture_classifier.onnx, distilled here
# from the authors' classifier) on 18 real HaGRID photos (assets/hagrid-sample), with the authors'
# own pair as the reference and the project's faster one-stage detector beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# everything the tests need (runtime + every stage), at the versions of the lock (scripts/lock.sh renews it)
.venv/bin/pip install -q -c requirements/x86_64-py311.txt -e ".[dev,tflite,train,quantize]"
OUT=${1:-runs/demo}
mkdir -p "$OUT"
DETECTOR=assets/models/hand_detector_cut.onnx
CLASSIFIER=assets/models/gesture_classifier.onnx
DATA=assets/hagrid-sample
echo "== accuracy of the default pipeline on the shipped HaGRID sample"
.venv/bin/hagrid-edge eval --model "$DETECTOR" --classifier "$CLASSIFIER" --data "$DATA" --split val
echo "== the reference: the HaGRID authors' hand detector + crop classifier on the same photos"
.venv/bin/hagrid-edge eval --model "$DETECTOR" --classifier assets/models/crops_classifier.onnx \
    --data "$DATA" --split val
echo "== the project's one-stage gesture detector (faster, finds hands worse) on the same photos"
.venv/bin/hagrid-edge eval --model assets/models/gesture_detector.onnx --data "$DATA" --split val
echo "== live pipeline over the sample photos: gesture events and an annotated video"
.venv/bin/hagrid-edge run --engine "$DETECTOR" --classifier "$CLASSIFIER" --source "$DATA/hagrid_dataset_512" \
    --headless --events "$OUT/events.jsonl" --output "$OUT/annotated.mp4"
echo "events: $OUT/events.jsonl   video: $OUT/annotated.mp4"
