"""FP32 ONNX -> INT8 (full-integer, with chosen layers in float) or FP16 TFLite for LiteRT (Raspberry Pi).

Conversion is onnx2tf, run as a subprocess in its own environment (``tflite_env``): it writes the
float32 and float16 TFLite and a SavedModel, from which the same environment writes the float32
TFLite again with its serving signature. INT8 is then ai-edge-quantizer on that float file, in this
process (``tflite_int8``): calibrated once on our inputs (the spec's preprocessing of HaGRID photos),
int8 weights per channel and int8 activations everywhere except the layers the guard keeps in float,
with int8 input and outputs (their scales in the spec). onnx2tf's sample file, which it would
otherwise download, is written from our data; the subprocess gets an unreachable proxy so no
conversion can fetch anything.

A new file is checked before it is renamed into place: it loads in LiteRT through the project's
adapter, the spec's tensor names fit it, and its outputs agree with the FP32 ONNX on calibration
inputs (a converter can report success for a wrong graph). The spec is written beside it and
embedded as a zip appended to the flatbuffer (TFLite's associated-file packing).
"""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import onnx

from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.deploy.rpi.litert_backend import LiteRTBackend, _interpreter_class
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import atomic_path
from hagrid_edge.processing import output
from hagrid_edge.quantize.choices import tflite_levels
from hagrid_edge.quantize.onnx_files import fix_batch
from hagrid_edge.quantize.tflite_env import ONNX2TF_VERSION, TENSORFLOW_VERSION, converter_python
from hagrid_edge.quantize.tflite_int8 import QUANTIZER, TFLiteCandidates
from hagrid_edge.spec import TFLITE_SPEC_MEMBER, ModelSpec, Quant, save_sidecar, sha256_file

# onnx2tf reads this file from its working directory instead of downloading it.
_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
_SAMPLE_SHAPE = (20, 128, 128)
_CHECK_INPUTS = 8  # calibration inputs run through both models to check the conversion
MIN_AGREEMENT = 0.95  # output correlation with the FP32 ONNX below this means a broken conversion, not quantization
CONVERT_TIMEOUT_S = 3600
_NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "",
               "no_proxy": "", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# Run in the converter environment: the SavedModel onnx2tf wrote -> float32 TFLite with its signature.
_SIGNED_FLOAT = ("import sys, tensorflow as tf; "
                 "open(sys.argv[2], 'wb').write(tf.lite.TFLiteConverter.from_saved_model(sys.argv[1]).convert())")


def _check_args(fp32_onnx: Path, spec: ModelSpec, calib_inputs: Sequence[np.ndarray]) -> None:
    if not fp32_onnx.is_file():
        raise HagridEdgeError(f"{fp32_onnx}: no such model file")
    if spec.layout != "NCHW" or spec.input_dtype != "float32":
        raise HagridEdgeError(f"{fp32_onnx}: TFLite export takes a float32 NCHW ONNX model "
                              f"(spec: {spec.input_dtype} {spec.layout})")
    if not calib_inputs:
        raise HagridEdgeError(f"{fp32_onnx}: no calibration inputs for the TFLite export")
    want = (1, 3, *spec.input_size)
    for k, x in enumerate(calib_inputs):
        if tuple(x.shape) != want:
            raise HagridEdgeError(f"calibration input {k}: shape {tuple(x.shape)}, the model takes {want}")


def _static_batch(fp32_onnx: Path, dest: Path) -> None:
    """Copy the model with batch 1 written into its inputs, outputs and every inferred shape.

    onnx2tf's NCHW -> NHWC tracking goes wrong on a symbolic batch dimension even with its ``-b 1``
    (a residual Add is transposed back to NCHW: a wrong classifier, a failing detector); with static
    shapes both HaGRID models convert with every intermediate tensor matching ONNX Runtime.
    """
    model = fix_batch(onnx.load(str(fp32_onnx)), 1)
    del model.graph.value_info[:]  # stale symbolic shapes; inferred again from the pinned inputs
    onnx.save(onnx.shape_inference.infer_shapes(model), str(dest))


def _write_sample(work: Path, calib_inputs: Sequence[np.ndarray]) -> None:
    """onnx2tf's sample file (NHWC float32, 128x128) made from our own calibration inputs."""
    n, h, w = _SAMPLE_SHAPE
    picks = [np.asarray(calib_inputs[k % len(calib_inputs)][0], np.float32).transpose(1, 2, 0) for k in range(n)]
    sample = np.stack([cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) for img in picks])
    np.save(work / _SAMPLE_FILE, sample.astype(np.float32))


def _error_line(log: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith(("W0000", "E0000"))]
    return (errors or lines or ["no output"])[-1][:300]


def _run(cmd: list[str], work: Path, python: Path, what: str, log_path: Path) -> None:
    nice = ["nice", "-n", "10"] if os.name == "posix" else []
    # onnx2tf runs the environment's `onnxsim` script by name; without it the graph is left unsimplified.
    path = f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        done = subprocess.run(nice + cmd, cwd=work, env={**os.environ, **_NO_NETWORK, "PATH": path},
                              capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise HagridEdgeError(f"{what} did not finish in {CONVERT_TIMEOUT_S} s") from None
    if done.returncode != 0:
        log = done.stdout + done.stderr
        log_path.write_text(log, encoding="utf-8")
        raise HagridEdgeError(f"{what} failed ({_error_line(log)}); log in {log_path}")


def _convert_float(python: Path, model: Path, work: Path, log_path: Path) -> tuple[Path, Path]:
    """onnx2tf: (float32 TFLite with its serving signature, float16 TFLite)."""
    out_dir = work / "tf"
    _run([str(python), "-m", "onnx2tf", "-i", str(model), "-o", str(out_dir), "-n", "-osd"], work, python,
         f"{model}: onnx2tf", log_path)
    float16 = out_dir / f"{model.stem}_float16.tflite"
    if not float16.is_file() or not (out_dir / "saved_model.pb").is_file():
        raise HagridEdgeError(f"{model}: onnx2tf wrote no TFLite / SavedModel into {out_dir}")
    signed = work / f"{model.stem}_float32_signed.tflite"
    _run([str(python), "-c", _SIGNED_FLOAT, str(out_dir), str(signed)], work, python,
         f"{model}: SavedModel -> float32 TFLite", log_path)
    return signed, float16


def tensor_quant(detail: dict) -> Quant | None:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] not in (np.int8, np.uint8):
        return None
    return Quant(float(scale), int(zero_point), np.dtype(detail["dtype"]).name)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; unlike cosine similarity it is not fooled by a large common offset of logits."""
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _tflite_spec(tflite: Path, spec: ModelSpec, reference: list[dict[str, np.ndarray]],
                 inputs: list[np.ndarray], provenance: dict) -> ModelSpec:
    """The artifact's spec: its tensor names, layout and I/O quantization, outputs matched to roles."""
    interp = _interpreter_class()(model_path=str(tflite))
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    outs = interp.get_output_details()
    h, w = spec.input_size
    if tuple(inp["shape"]) != (1, h, w, 3):
        raise HagridEdgeError(f"{tflite.name}: input shape {tuple(inp['shape'])}, expected NHWC (1, {h}, {w}, 3)")
    input_quant = tensor_quant(inp)
    x = np.ascontiguousarray(inputs[0].transpose(0, 2, 3, 1))
    interp.set_tensor(inp["index"], input_quant.quantize(x) if input_quant else x)
    interp.invoke()
    got = {d["name"]: interp.get_tensor(d["index"]) for d in outs}
    details = {d["name"]: d for d in outs}
    names: dict[str, str] = {}
    for role, onnx_name in spec.output_names.items():
        ref = reference[0][onnx_name]
        cands = [n for n in got if got[n].shape == ref.shape and n not in names.values()]
        if not cands:
            raise HagridEdgeError(f"{tflite.name}: no output of shape {ref.shape} for {role!r} "
                                  f"(outputs {[tuple(v.shape) for v in got.values()]})")
        q = {n: tensor_quant(details[n]) for n in cands}
        names[role] = max(cands, key=lambda n: _correlation(q[n].dequantize(got[n]) if q[n] else got[n], ref))
    output_quant = {role: q for role, n in names.items() if (q := tensor_quant(details[n])) is not None}
    return replace(spec, layout="NHWC", input_name=inp["name"], output_names=names,
                   input_dtype=np.dtype(inp["dtype"]).name, input_quant=input_quant,
                   output_quant=output_quant, provenance=provenance)


def _agreement(tflite: Path, spec: ModelSpec, reference: list[dict[str, np.ndarray]], onnx_spec: ModelSpec,
               inputs: list[np.ndarray]) -> dict[str, float]:
    """Correlation per output role between the TFLite file (through the LiteRT adapter) and FP32 ONNX."""
    backend = LiteRTBackend(tflite, spec, threads=1)
    ours: dict[str, list[np.ndarray]] = {r: [] for r in spec.output_names}
    theirs: dict[str, list[np.ndarray]] = {r: [] for r in spec.output_names}
    for x, ref in zip(inputs, reference, strict=True):
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        got = backend.infer(spec.input_quant.quantize(x) if spec.input_quant else x)
        for role in spec.output_names:
            ours[role].append(output(got, spec, role))
            theirs[role].append(output(ref, onnx_spec, role))
    return {r: round(_correlation(np.concatenate(ours[r]), np.concatenate(theirs[r])), 5) for r in spec.output_names}


def with_embedded_spec(tflite_bytes: bytes, spec: ModelSpec) -> bytes:
    """The flatbuffer with a zip holding the spec appended (runtimes ignore trailing bytes)."""
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(TFLITE_SPEC_MEMBER, spec.to_json())
    return tflite_bytes + buf.getvalue()


class TFLiteConversion:
    """One onnx2tf run of an FP32 ONNX model, the TFLite artifacts made from it, and their checks."""

    def __init__(self, fp32_onnx: Path, spec: ModelSpec, calib_inputs: Sequence[np.ndarray], work: Path,
                 log_path: Path, install_env: bool = True) -> None:
        """``log_path``: where the converter's log goes when it fails."""
        self.fp32_onnx, self.spec, self.work = Path(fp32_onnx), spec, Path(work)
        _check_args(self.fp32_onnx, spec, calib_inputs)
        python = converter_python(install=install_env)
        self.calib_inputs = [np.asarray(x, np.float32) for x in calib_inputs]
        self.check_inputs = self.calib_inputs[:_CHECK_INPUTS]
        onnx_backend = open_backend(self.fp32_onnx, spec=spec)
        self.reference = [onnx_backend.infer(x) for x in self.check_inputs]
        model = self.work / "model.onnx"
        _static_batch(self.fp32_onnx, model)
        _write_sample(self.work, self.calib_inputs)
        self.float32, self.float16 = _convert_float(python, model, self.work, log_path)

    def provenance(self, mode: str, calibration_inputs: int = 0, float_layers: Sequence[str] = ()) -> dict:
        converter = f"onnx2tf {ONNX2TF_VERSION} (TensorFlow {TENSORFLOW_VERSION})"
        if mode == "int8":
            from importlib.metadata import version

            converter += f" + {QUANTIZER} {version(QUANTIZER)}"
        return {"converter": converter, "precision": mode,
                "weights": "int8 per-channel" if mode == "int8" else "float16",
                "activations": "int8" if mode == "int8" else "float32",
                "float_layers": list(float_layers), "source_sha256": sha256_file(self.fp32_onnx),
                "source_file": self.fp32_onnx.name, "calibration_inputs": calibration_inputs,
                "parent": self.spec.provenance}

    def spec_of(self, tflite: Path, provenance: dict | None = None) -> ModelSpec:
        return _tflite_spec(tflite, self.spec, self.reference, self.check_inputs, provenance or {})

    def int8_candidates(self, calib_inputs: Sequence[np.ndarray] | None = None,
                        method: str = "percentile") -> TFLiteCandidates:
        """``method``: the activation ranges, as ``calibrate --method`` names them (minmax: the true min and
        max; a percentile method: that percentile of all calibration values, as for the QDQ ONNX; entropy:
        the default percentile; mse: each tensor's level by quantization error)."""
        inputs = self.calib_inputs if calib_inputs is None else calib_inputs
        return TFLiteCandidates(self.float32, inputs, self.spec_of, self.work, input_range(self.spec),
                                levels=tflite_levels(method))


    def write(self, produced: Path, out_path: Path, provenance: dict) -> ModelSpec:
        """Check ``produced`` against the FP32 ONNX and write it (spec embedded and beside it) atomically."""
        new_spec = self.spec_of(produced, provenance)
        agreement = _agreement(produced, new_spec, self.reference, self.spec, self.check_inputs)
        bad = {r: c for r, c in agreement.items() if c < MIN_AGREEMENT}
        if bad:
            raise HagridEdgeError(f"{self.fp32_onnx}: the TFLite {provenance['precision']} conversion disagrees "
                                  f"with the ONNX model (output correlation {bad} < {MIN_AGREEMENT})")
        new_spec.provenance = {**provenance, "agreement_correlation": agreement}
        with atomic_path(out_path) as part:
            part.write_bytes(with_embedded_spec(produced.read_bytes(), new_spec))
            LiteRTBackend(part, new_spec, threads=1)  # the written file loads and fits its spec
            save_sidecar(new_spec, out_path)
        return new_spec



def input_range(spec: ModelSpec) -> tuple[float, float]:
    """The model input's exact range: the spec's normalisation applied to pixel values 0 and 255."""
    lows = [(0.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    highs = [(255.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    return min(lows), max(highs)
