#!/usr/bin/env bash
# The CI benchmark: the shipped default detector (ours, SSDLite), the HaGRID authors' hand detector + crop classifier,
# the detector's INT8 QDQ form and the FP32 graph it was quantized from, the two-stage pipelines, and
# MediaPipe's palm detector as a latency-only anchor, on hagrid512-mini val; prints report.md and
# gates against benchmarks/baseline.json. benchmarks/baseline.json was written by this script.
#
# usage: benchmarks/ci_bench.sh REPORT_DIR INT8_DIR [BENCH_OPTION...]
#   INT8_DIR holds calibrate's output; when it lacks hand_detector_int8.onnx, calibrate runs first.
#   BENCH_OPTION defaults to --gate; pass --write-baseline benchmarks/baseline.json to renew the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: $0 REPORT_DIR INT8_DIR [BENCH_OPTION...]" >&2
    exit 2
fi
report=$1
int8=$2
shift 2
[ $# -gt 0 ] || set -- --gate
python=${PYTHON:-python}
shared=${HAGRID_EDGE_SHARED:-../shared}
data=$shared/data/hagrid512-mini
det=assets/models/hand_detector.onnx
cls=assets/models/crops_classifier.onnx

if [ ! -f "$int8/hand_detector_int8.onnx" ]; then
    "$python" quantize/calibrate.py --subset --model "$det" --data "$data" --targets onnx-int8 --out "$int8" >&2
fi
exec "$python" -m hagrid_edge.cli bench \
    --model assets/models/ssdlite_small_gestures.onnx "$det" "$int8/hand_detector_fp32.onnx" "$int8/hand_detector_int8.onnx" \
            "$det+$cls" "$int8/hand_detector_fp32.onnx+$cls" "$int8/hand_detector_int8.onnx+$cls" "$cls" \
    --latency-only "$shared/models/mediapipe-hands/palm_detection_lite.tflite" \
    --data "$data" --split val --runs 100 --warmup 10 --threads 1 --machine ci \
    --report "$report" "$@"
