#!/usr/bin/env bash
# The CI benchmark: the shipped default detector (ours, SSDLite), the HaGRID authors' hand detector + crop classifier,
# the INT8 QDQ forms of both (calibrated and guarded as a pair) and the FP32 graphs they were quantized from,
# the two-stage pipelines in FP32 and INT8, and MediaPipe's palm detector as a latency-only anchor, on
# hagrid512-mini val; prints report.md and gates against benchmarks/baseline.json (written by this script).
#
# usage: benchmarks/ci_bench.sh REPORT_DIR INT8_DIR [BENCH_OPTION...]
#   INT8_DIR holds calibrate's output; when it lacks the INT8 pair, calibrate runs first.
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

if [ ! -f "$int8/hand_detector_int8.onnx" ] || [ ! -f "$int8/crops_classifier_int8.onnx" ]; then
    "$python" quantize/calibrate.py --subset --model "$det" --classifier "$cls" --data "$data" --targets onnx-int8 \
        --out "$int8" >&2
fi
fp32=$int8/hand_detector_fp32.onnx+$int8/crops_classifier_fp32.onnx
exec "$python" -m hagrid_edge.cli bench \
    --model assets/models/ssdlite_small_gestures.onnx "$det" "$int8/hand_detector_fp32.onnx" "$int8/hand_detector_int8.onnx" \
            "$det+$cls" "$fp32" "$int8/hand_detector_int8.onnx+$int8/crops_classifier_int8.onnx" "$cls" \
    --latency-only "$shared/models/mediapipe-hands/palm_detection_lite.tflite" \
    --data "$data" --split val --runs 100 --warmup 10 --threads 1 --machine ci \
    --report "$report" "$@"
