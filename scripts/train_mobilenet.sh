#!/usr/bin/env bash
# Train the MobileNetV3 gesture classifier and the SSDLite gesture detector with the shipped configs,
# then export the detector to FP32 ONNX (+ spec) and score it on the val split.
#
#   scripts/train_mobilenet.sh [DATA_ROOT] [OUT_DIR] [EPOCHS]
#
# DATA_ROOT (a HaGRID root with train and val annotations) defaults to ../shared/data/hagrid512-mini;
# OUT_DIR defaults to runs/mobilenet; EPOCHS (optional) shortens both schedules.
# Runs on a CPU-only machine; uses the GPU when PyTorch sees one. For N GPUs run the same configs with
#   torchrun --nproc_per_node N -m hagrid_edge.cli train --config CONFIG
set -euo pipefail
cd "$(dirname "$0")/.."

HAGRID_EDGE=${HAGRID_EDGE:-hagrid-edge}
if ! command -v "$HAGRID_EDGE" >/dev/null 2>&1 && [ -x .venv/bin/hagrid-edge ]; then HAGRID_EDGE=.venv/bin/hagrid-edge; fi

DATA=${1:-../shared/data/hagrid512-mini}
if [ ! -d "$DATA" ]; then
    echo "train_mobilenet.sh: no data root $DATA (usage: scripts/train_mobilenet.sh [DATA_ROOT] [OUT_DIR] [EPOCHS])" >&2
    exit 2
fi
OUT=${2:-runs/mobilenet}
EPOCHS=${3:-}
epochs_arg=()
[ -n "$EPOCHS" ] && epochs_arg=(--epochs "$EPOCHS")

echo "== classifier (MobileNetV3-small) on $DATA -> $OUT/classifier"
"$HAGRID_EDGE" train --config train/configs/mobilenet_v3_small_classifier.yaml --data "$DATA" \
    --out "$OUT/classifier" "${epochs_arg[@]}"

echo "== detector (SSDLite320-MobileNetV3) on $DATA -> $OUT/detector"
"$HAGRID_EDGE" train --config train/configs/ssdlite_small_gestures.yaml --data "$DATA" \
    --out "$OUT/detector" "${epochs_arg[@]}"

echo "== export + eval"
"$HAGRID_EDGE" export --checkpoint "$OUT/detector/best.pt" --out "$OUT/ssdlite_gestures.onnx" --data "$DATA"
"$HAGRID_EDGE" eval --model "$OUT/ssdlite_gestures.onnx" --data "$DATA" --split val --task gestures
"$HAGRID_EDGE" eval --model "$OUT/ssdlite_gestures.onnx" --data "$DATA" --split val --task hands
