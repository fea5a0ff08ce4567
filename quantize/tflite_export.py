"""FP32 ONNX -> full-integer INT8 or FP16 TFLite for LiteRT / tflite-runtime (Raspberry Pi).

The converter is onnx2tf, run as a subprocess in its own environment (``tflite_env``). It is given
our calibration inputs (the spec's preprocessing of HaGRID images) as NHWC numpy data, and its
sample file, which it would otherwise download to check intermediate outputs, is written from the
same data; the subprocess gets an unreachable proxy so no conversion can fetch anything.

INT8 is full-integer: int8 per-channel weights and int8 activations everywhere, with int8 input and
outputs (``io="int8"``, their scales in the spec) or float32 ones (``io="float32"``, quantize and
dequantize inside the file). The new file is checked before it is renamed into place: it loads in
LiteRT through the project's adapter, the spec's tensor names fit it, and its outputs agree with the
FP32 ONNX on calibration inputs (onnx2tf can report success for a wrong graph). The spec is written
beside it and embedded as a zip appended to the flatbuffer (TFLite's associated-file packing).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import zipfile
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
from hagrid_edge.quantize.graph_cut import fix_batch
from hagrid_edge.quantize.tflite_env import ONNX2TF_VERSION, TENSORFLOW_VERSION, converter_python
from hagrid_edge.spec import TFLITE_SPEC_MEMBER, ModelSpec, Quant, save_sidecar, sha256_file

MODES = ("int8", "fp16")
# onnx2tf's output file for (mode, io)
_PRODUCED = {("int8", "int8"): "full_integer_quant", ("int8", "float32"): "integer_quant",
             ("fp16", "float32"): "float16"}
# onnx2tf reads this file from its working directory instead of downloading it.
_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
_SAMPLE_SHAPE = (20, 128, 128)
# mean and std onnx2tf applies to the calibration data: none, it is already the model's input
_IDENTITY_NORM = ("[[[[0,0,0]]]]", "[[[[1,1,1]]]]")
_CHECK_INPUTS = 8  # calibration inputs run through both models to check the conversion
MIN_AGREEMENT = 0.95  # output correlation with the FP32 ONNX below this means a broken conversion, not quantization
CONVERT_TIMEOUT_S = 3600
_NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "",
               "no_proxy": "", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _check_args(fp32_onnx: Path, spec: ModelSpec, calib_inputs: list[np.ndarray], mode: str, io_dtype: str
                ) -> None:
    if mode not in MODES:
        raise HagridEdgeError(f"TFLite mode {mode!r} is not one of {MODES}")
    if (mode, io_dtype) not in _PRODUCED:
        allowed = sorted(io for m, io in _PRODUCED if m == mode)
        raise HagridEdgeError(f"TFLite {mode}: io {io_dtype!r} is not one of {allowed}")
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


def _write_calibration(work: Path, calib_inputs: list[np.ndarray]) -> Path:
    """Calibration data as onnx2tf wants it (NHWC float32), and its sample file from the same images."""
    nhwc = np.concatenate([np.asarray(x, np.float32).transpose(0, 2, 3, 1) for x in calib_inputs])
    data = work / "calibration.npy"
    np.save(data, nhwc)
    n, h, w = _SAMPLE_SHAPE
    picks = nhwc[np.arange(n) % len(nhwc)]
    sample = np.stack([cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) for img in picks])
    np.save(work / _SAMPLE_FILE, sample.astype(np.float32))
    return data


def _error_line(log: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith(("W0000", "E0000"))]
    return (errors or lines or ["no output"])[-1][:300]


def _run_onnx2tf(python: Path, model: Path, spec: ModelSpec, calib: Path, work: Path, mode: str,
                 io_dtype: str, log_path: Path) -> Path:
    out_dir = work / "tf"
    cmd = [str(python), "-m", "onnx2tf", "-i", str(model), "-o", str(out_dir), "-n"]
    if mode == "int8":
        cmd += ["-oiqt", "-qt", "per-channel", "-cind", spec.input_name, str(calib), *_IDENTITY_NORM,
                "-iqd", io_dtype, "-oqd", io_dtype]
    nice = ["nice", "-n", "10"] if os.name == "posix" else []
    # onnx2tf runs the environment's `onnxsim` script by name; without it the graph is left unsimplified.
    path = f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        done = subprocess.run(nice + cmd, cwd=work, env={**os.environ, **_NO_NETWORK, "PATH": path},
                              capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise HagridEdgeError(f"{model}: onnx2tf did not finish in {CONVERT_TIMEOUT_S} s") from None
    log = done.stdout + done.stderr
    produced = out_dir / f"{model.stem}_{_PRODUCED[(mode, io_dtype)]}.tflite"
    if done.returncode != 0 or not produced.is_file():
        log_path.write_text(log, encoding="utf-8")
        raise HagridEdgeError(f"{model}: onnx2tf failed ({_error_line(log)}); log in {log_path}")
    return produced


def _quant(detail: dict) -> Quant | None:
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
    input_quant = _quant(inp)
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
        q = {n: _quant(details[n]) for n in cands}
        names[role] = max(cands, key=lambda n: _correlation(q[n].dequantize(got[n]) if q[n] else got[n], ref))
    output_quant = {role: q for role, n in names.items() if (q := _quant(details[n])) is not None}
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


def _with_embedded_spec(tflite_bytes: bytes, spec: ModelSpec) -> bytes:
    """The flatbuffer with a zip holding the spec appended (runtimes ignore trailing bytes)."""
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(TFLITE_SPEC_MEMBER, spec.to_json())
    return tflite_bytes + buf.getvalue()


def export_tflite(fp32_onnx: Path, spec: ModelSpec, calib_inputs: list[np.ndarray], out_path: Path, mode: str,
                  io: str = "int8", install_env: bool = True) -> ModelSpec:
    """Convert ``fp32_onnx`` to ``out_path`` (INT8 full-integer or FP16 TFLite); returns the artifact's spec.

    ``calib_inputs`` are batch-1 NCHW float32 tensors from ``processing.preprocess`` for ``spec``.
    ``io`` is the dtype of the INT8 file's input and outputs (FP16 files have float32 I/O).
    ``install_env`` allows creating the converter environment on first use.
    """
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    io_dtype = "float32" if mode == "fp16" else io
    _check_args(fp32_onnx, spec, calib_inputs, mode, io_dtype)
    python = converter_python(install=install_env)
    onnx_backend = open_backend(fp32_onnx, spec=spec)
    check_inputs = [np.asarray(x, np.float32) for x in calib_inputs[:_CHECK_INPUTS]]
    reference = [onnx_backend.infer(x) for x in check_inputs]
    provenance = {
        "converter": f"onnx2tf {ONNX2TF_VERSION} (TensorFlow {TENSORFLOW_VERSION})", "precision": mode, "io_dtype": io_dtype,
        "weights": "int8 per-channel" if mode == "int8" else "float16",
        "activations": "int8" if mode == "int8" else "float32",
        "source_sha256": sha256_file(fp32_onnx), "source_file": fp32_onnx.name,
        "calibration_inputs": len(calib_inputs) if mode == "int8" else 0,
        "parent": spec.provenance,
    }
    with tempfile.TemporaryDirectory(prefix="hagrid-tflite-") as tmp:
        work = Path(tmp)
        model = work / "model.onnx"
        _static_batch(fp32_onnx, model)
        calib = _write_calibration(work, calib_inputs)
        log_path = out_path.with_name(out_path.name + ".onnx2tf.log")
        produced = _run_onnx2tf(python, model, spec, calib, work, mode, io_dtype, log_path)
        new_spec = _tflite_spec(produced, spec, reference, check_inputs, provenance)
        agreement = _agreement(produced, new_spec, reference, spec, check_inputs)
        bad = {r: c for r, c in agreement.items() if c < MIN_AGREEMENT}
        if bad:
            raise HagridEdgeError(f"{fp32_onnx}: the TFLite {mode} conversion disagrees with the ONNX model "
                                  f"(output correlation {bad} < {MIN_AGREEMENT})")
        new_spec.provenance = {**provenance, "agreement_correlation": agreement}
        with atomic_path(out_path) as part:
            part.write_bytes(_with_embedded_spec(produced.read_bytes(), new_spec))
            LiteRTBackend(part, new_spec, threads=1)  # the written file loads and fits its spec
            save_sidecar(new_spec, out_path)
        log_path.unlink(missing_ok=True)  # a failed earlier run's log
    return new_spec
