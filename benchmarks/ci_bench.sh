#!/usr/bin/env bash
# The CI benchmark of what ships (assets/models/), on hagrid512-mini val, each run gated against a
# baseline made by an earlier run of this script (never by the run it gates):
# 1. accuracy, drop and x86 latency (benchmarks/baseline.json):
#    the one-stage gesture detector (the main job), its Pi 5 INT8 TFLite and its INT8 QDQ ONNX (a Jetson's
#    explicit INT8), against it;
#    the two-stage pair (the authors' cut hand detector + our crop classifier) and its INT8 TFLite pair;
#    the HaGRID authors' pair (their cut detector + crop classifier) as the reference;
#    MediaPipe's palm detector as a latency-only anchor;
# 2. the INT8 speed claim where it is true (benchmarks/baseline-pi5.json): instructions per frame of the
#    one-stage INT8 TFLite against its FP16-weight form (FP32 compute) on an emulated Pi 5 (Cortex-A76),
#    at most 0.65x (the limit kept in that baseline: --write-baseline writes the default, 0.8).
# Nothing is calibrated here: the INT8 artifacts are the shipped ones.
#
# usage: benchmarks/ci_bench.sh REPORT_DIR [BENCH_OPTION...]
#   BENCH_OPTION defaults to --gate; pass --write-baseline to renew both baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: $0 REPORT_DIR [--gate | --write-baseline]" >&2
    exit 2
fi
report=$1
mode=${2:---gate}
python=${PYTHON:-python}
shared=${HAGRID_EDGE_SHARED:-../shared}
m=assets/models
bench=("$python" -m hagrid_edge.cli bench --data "$shared/data/hagrid512-mini" --split val --threads 1 --machine ci)
gate() {  # gate BASELINE: the bench option that checks against (or renews) BASELINE
    case $mode in
        --gate) echo --gate --baseline "$1" ;;
        --write-baseline) echo --write-baseline "$1" ;;
        *) echo "$0: unknown option $mode (--gate or --write-baseline)" >&2; exit 2 ;;
    esac
}
gate_host=$(gate benchmarks/baseline.json)
gate_pi5=$(gate benchmarks/baseline-pi5.json)
# shellcheck disable=SC2086  # gate_* are option lists
"${bench[@]}" \
    --model "$m/gesture_detector.onnx" "$m/gesture_detector_int8.tflite" "$m/gesture_detector_int8.onnx" \
            "$m/hand_detector_cut.onnx+$m/gesture_classifier.onnx" \
            "$m/hand_detector_int8.tflite+$m/gesture_classifier_int8.tflite" \
            "$m/hand_detector_cut.onnx+$m/crops_classifier.onnx" \
    --reference "$m/gesture_detector_int8.tflite=$m/gesture_detector.onnx" \
    --reference "$m/gesture_detector_int8.onnx=$m/gesture_detector.onnx" \
    --reference "$m/gesture_classifier_int8.tflite=$m/gesture_classifier.onnx" \
    --latency-only "$shared/models/mediapipe-hands/palm_detection_lite.tflite" \
    --runs 100 --warmup 10 --report "$report/host" $gate_host
# shellcheck disable=SC2086
"${bench[@]}" --task gestures \
    --model "$m/gesture_detector_int8.tflite" "$m/gesture_detector_fp16.tflite" \
    --reference "$m/gesture_detector_int8.tflite=$m/gesture_detector_fp16.tflite" \
    --runs 20 --warmup 2 --emulate pi5 --emulate-frames 6 --report "$report/pi5" $gate_pi5
