#!/usr/bin/env bash
# Reproduce the shipped gesture models from the repository's configs, starting from the HaGRID
# authors' released ONNX models, then export them (FP32 ONNX + spec) and score them on val:
#   gesture_detector.onnx    one-stage, 18 gestures + no_gesture, in two stages: train/configs/gesture_detector.yaml
#                            from the authors' hand detector, then gesture_detector_distill.yaml (taught hands by
#                            that detector, the last epochs with int8 rounding)
#   gesture_classifier.onnx  hand-crop classifier behind the authors' hand detector
#                            (train/configs/gesture_classifier.yaml)
#
#   scripts/train_mobilenet.sh [DATA_ROOT] [OUT_DIR] [EPOCHS]
#
# DATA_ROOT (HaGRID train + val annotations) defaults to ../shared/data/hagrid512-mini, OUT_DIR to
# runs/gesture_models; EPOCHS (optional) overrides every schedule. Environment: CROPS (the hand-crop
# folder, default ../shared/data/hagrid-crops), AUTHORS (the folder of hand_detector.onnx and
# crops_classifier.onnx, default ../shared/models/hagrid-hand-detector), SMOKE=1 (a few steps on a
# few photos: what CI runs). Uses the GPU when PyTorch sees one; N GPUs: the same configs under
#   torchrun --nproc_per_node N -m hagrid_edge.cli train --config CONFIG
# Time on a 2-core CPU: see assets/models/README.md (the detector's full schedule wants a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

HAGRID_EDGE=${HAGRID_EDGE:-hagrid-edge}
if ! command -v "$HAGRID_EDGE" >/dev/null 2>&1 && [ -x .venv/bin/hagrid-edge ]; then HAGRID_EDGE=.venv/bin/hagrid-edge; fi

DATA=${1:-../shared/data/hagrid512-mini}
OUT=${2:-runs/gesture_models}
EPOCHS=${3:-}
CROPS=${CROPS:-../shared/data/hagrid-crops}
AUTHORS=${AUTHORS:-../shared/models/hagrid-hand-detector}
for need in "$DATA" "$CROPS" "$AUTHORS"; do
    if [ ! -d "$need" ]; then
        echo "train_mobilenet.sh: no folder $need (usage: scripts/train_mobilenet.sh [DATA_ROOT] [OUT_DIR] [EPOCHS])" >&2
        exit 2
    fi
done
train_args=(--data "$DATA")
eval_args=(--data "$DATA" --split val)
[ -n "$EPOCHS" ] && train_args+=(--epochs "$EPOCHS")
if [ "${SMOKE:-0}" = 1 ]; then
    train_args+=(--epochs 1 --limit 8 --val-limit 4 --epoch-samples 32 --batch-size 8 --workers 0 --no-progress)
    eval_args+=(--limit 4)
fi

echo "== gesture detector, from the authors' hand detector -> $OUT/detector"
"$HAGRID_EDGE" train --config train/configs/gesture_detector.yaml "${train_args[@]}" \
    --init "$AUTHORS/hand_detector.onnx" --out "$OUT/detector"
"$HAGRID_EDGE" export --checkpoint "$OUT/detector/last.pt" --out "$OUT/gesture_detector_stage1.onnx" --data "$DATA"
echo "== gesture detector, stage 2: hands taught by the authors' hand detector, int8-aware end -> $OUT/detector_distill"
"$HAGRID_EDGE" train --config train/configs/gesture_detector_distill.yaml "${train_args[@]}" \
    --init "$OUT/gesture_detector_stage1.onnx" --teacher "$AUTHORS/hand_detector.onnx" --out "$OUT/detector_distill"
"$HAGRID_EDGE" export --checkpoint "$OUT/detector_distill/last.pt" --out "$OUT/gesture_detector.onnx" --data "$DATA"
"$HAGRID_EDGE" eval --model "$OUT/gesture_detector.onnx" "${eval_args[@]}" --task gestures

echo "== hand-crop classifier, distilled from the authors' crop classifier -> $OUT/classifier"
"$HAGRID_EDGE" train --config train/configs/gesture_classifier.yaml "${train_args[@]}" \
    --init "$AUTHORS/crops_classifier.onnx" --teacher "$AUTHORS/crops_classifier.onnx" \
    --detector "$AUTHORS/hand_detector.onnx" --crops "$CROPS" --out "$OUT/classifier"
"$HAGRID_EDGE" export --checkpoint "$OUT/classifier/last.pt" --out "$OUT/gesture_classifier.onnx" --data "$DATA"
"$HAGRID_EDGE" eval --model "$AUTHORS/hand_detector.onnx" --classifier "$OUT/gesture_classifier.onnx" \
    "${eval_args[@]}" --task gestures
