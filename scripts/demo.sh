#!/usr/bin/env bash
# The README's first command: install into .venv and run the main job on the shipped defaults
# (the HaGRID authors' hand detector + crop classifier, 18 real HaGRID photos in assets/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -e ".[dev,tflite]"
OUT=${1:-runs/demo}
mkdir -p "$OUT"
DET=assets/models/hand_detector.onnx
CLS=assets/models/crops_classifier.onnx
echo "== accuracy of the default two-stage pipeline on the shipped HaGRID sample"
.venv/bin/hagrid-edge eval --model "$DET" --classifier "$CLS" --data assets/hagrid-sample --split val
echo "== live pipeline over the sample photos: gesture events and an annotated video"
.venv/bin/hagrid-edge run --engine "$DET" --classifier "$CLS" --source assets/hagrid-sample/hagrid_dataset_512 \
    --headless --events "$OUT/events.jsonl" --output "$OUT/annotated.mp4"
echo "events: $OUT/events.jsonl   video: $OUT/annotated.mp4"
