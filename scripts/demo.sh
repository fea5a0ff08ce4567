#!/usr/bin/env bash
# The README's first command: install into .venv and run the main job on the shipped defaults:
# the project's one-stage gesture detector (assets/models/gesture_detector.onnx; its INT8 TFLite is the
# Pi 5's form) on 18 real HaGRID photos (assets/hagrid-sample), with the two-stage pipelines beside it
# (the HaGRID authors' hand detector + the project's or the authors' crop classifier).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# everything the tests need (runtime + every stage), at the versions of the lock (scripts/lock.sh renews it)
.venv/bin/pip install -q -c requirements/x86_64-py311.txt -e ".[dev,tflite,train,quantize,mqtt]"
OUT=${1:-runs/demo}
mkdir -p "$OUT"
M=assets/models
DATA=assets/hagrid-sample
echo "== the main job (one-stage gesture detector), its Pi 5 INT8 form and the two-stage pipelines on the sample"
.venv/bin/hagrid-edge bench --data "$DATA" --split val --task gestures --runs 20 --warmup 2 --report "$OUT/bench" \
    --model "$M/gesture_detector.onnx" "$M/gesture_detector_int8.tflite" \
            "$M/hand_detector_cut.onnx+$M/gesture_classifier.onnx" "$M/hand_detector_cut.onnx+$M/crops_classifier.onnx" \
    --reference "$M/gesture_detector_int8.tflite=$M/gesture_detector.onnx" 2>/dev/null | sed -n '/^| device/,/^$/p'
echo "== live pipeline over the sample photos: gesture events and an annotated video"
.venv/bin/hagrid-edge run --engine "$M/gesture_detector.onnx" --source "$DATA/hagrid_dataset_512" \
    --headless --events "$OUT/events.jsonl" --output "$OUT/annotated.mp4"
echo "events: $OUT/events.jsonl   video: $OUT/annotated.mp4   report: $OUT/bench/report.md"
