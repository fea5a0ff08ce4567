"""Names shared by the calibrate command line and the calibration code (importable without onnx)."""

TARGETS = ("onnx-int8", "trt-cache", "tflite-int8", "tflite-fp16")
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "percentile"
DEFAULT_MAX_DROP = 0.5  # mAP50-95 points against the annotations (F1 points for classifiers)
# mAP50-95 of the INT8 detections against the FP32 model's own: the steadier limit (no label noise).
# On hagrid512-mini, INT8 forms of the authors' detector that reached 99 on the tune photos reached
# 99 on the held-apart photos too, while their drop against annotations moved by up to 0.3 points.
DEFAULT_MIN_AGREEMENT = 99.0
DEFAULT_TRT_VERSION = "8.5.2"  # JetPack 5.1, the newest JetPack whose TensorRT needs implicit INT8
# What a detector with a classifier behind it is guarded on: the pair's gestures (default) or hands alone.
DETECTOR_GUARDS = ("pair", "hands")
