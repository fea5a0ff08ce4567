#!/usr/bin/env bash
# The CI benchmark of what ships (assets/models/), on hagrid512-mini val, gated against
# benchmarks/baseline.json (made by an earlier run of this script, never by the run it gates):
#   the one-stage gesture detector;
#   the main job's pair (the authors' cut hand detector + our crop classifier) and the Pi's INT8 TFLite
#   pair made from it, against it (INT8 drop limits);
#   the HaGRID authors' pair (their cut detector + crop classifier) as the reference;
#   MediaPipe's palm detector as a latency-only anchor.
# Nothing is calibrated here: the INT8 artifacts are the shipped ones.
#
# usage: benchmarks/ci_bench.sh REPORT_DIR [BENCH_OPTION...]
#   BENCH_OPTION defaults to --gate; pass --write-baseline benchmarks/baseline.json to renew the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: $0 REPORT_DIR [BENCH_OPTION...]" >&2
    exit 2
fi
report=$1
shift
[ $# -gt 0 ] || set -- --gate
python=${PYTHON:-python}
shared=${HAGRID_EDGE_SHARED:-../shared}
m=assets/models
exec "$python" -m hagrid_edge.cli bench \
    --model "$m/gesture_detector.onnx" \
            "$m/hand_detector_cut.onnx+$m/gesture_classifier.onnx" \
            "$m/hand_detector_int8.tflite+$m/gesture_classifier_int8.tflite" \
            "$m/hand_detector_cut.onnx+$m/crops_classifier.onnx" \
    --reference "$m/gesture_classifier_int8.tflite=$m/gesture_classifier.onnx" \
    --latency-only "$shared/models/mediapipe-hands/palm_detection_lite.tflite" \
    --data "$shared/data/hagrid512-mini" --split val --runs 100 --warmup 10 --threads 1 --machine ci \
    --report "$report" "$@"
