"""Names shared by the calibrate command line and the calibration code (importable without onnx)."""

TARGETS = ("onnx-int8", "trt-cache", "tflite-int8", "tflite-fp16")
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "percentile"
DEFAULT_MAX_DROP = 0.5  # mAP50-95 points (F1 points for classifiers)
DEFAULT_TRT_VERSION = "8.5.2"  # JetPack 5.1, the newest JetPack whose TensorRT needs implicit INT8
