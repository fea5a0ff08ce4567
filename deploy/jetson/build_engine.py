"""Build a TensorRT engine on the device that will run it, and record what it was built with.

    python deploy/jetson/build_engine.py --onnx SRC --precision fp32|fp16|int8 --out ENGINE [--calib-cache C]

INT8 comes from either a QDQ ONNX (explicit quantization: TensorRT's ONNX parser maps QuantizeLinear /
DequantizeLinear, per-tensor and per-axis, onto its Q/DQ layers since 8.0 (TensorRT OSS 8.0.1 release
notes), so every supported TensorRT; a strongly typed network on TensorRT >= 10) or the FP32 ONNX plus
the calibration cache written by ``quantize/calibrate.py`` (implicit INT8 for TensorRT 8.5 to 10.x; the
cache's header is retagged for the TensorRT found here). Whether the ONNX carries Q/DQ is read from
TensorRT's own parse of it, so the builder needs no onnx package. The engine's ``<engine>.json`` sidecar
carries the source's spec plus ``provenance.engine`` (TensorRT version, GPU, precision, source ONNX
sha256) that the runtime checks before loading it. TensorRT and cuda-python are imported only when a
build runs.

Supported: TensorRT 8.5 (JetPack 5.1) and newer. TensorRT 11 removed weak typing: no FP16 / INT8
builder flags, no calibrators, no EXPLICIT_BATCH flag (every network is explicit-batch and strongly
typed), so there an INT8 engine comes from the QDQ ONNX only and an FP16 engine from an FP16 ONNX.
tests/test_tensorrt_conformance.py checks every TensorRT name used here against the real bindings of
each supported line.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from hagrid_edge.deploy.jetson.engine_meta import PRECISIONS, EngineInfo, with_engine_info
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import write_bytes_atomic
from hagrid_edge.quantize.trt_cache import CalibrationCache, format_cache, read_cache, retag
from hagrid_edge.spec import resolve_spec, save_sidecar, sha256_file

# JetPack 5.1. Older ones cannot run hagrid-edge's TensorRT code at all: JetPack 4.6 (TensorRT 8.2) has
# CUDA 10.2, for which there is no cuda-python (it starts at CUDA 11), and Python 3.6.
MIN_TRT = (8, 5)
STRONGLY_TYPED_FROM = (10, 0)
# TensorRT 11 builds strongly typed networks only: it removed BuilderFlag.FP16 / INT8, the INT8 calibrators
# and NetworkDefinitionCreationFlag.EXPLICIT_BATCH.
WEAK_TYPING_UNTIL = 10
CALIBRATORS = {"EntropyCalibration2": "IInt8EntropyCalibrator2", "EntropyCalibration": "IInt8EntropyCalibrator",
               "MinMaxCalibration": "IInt8MinMaxCalibrator"}


@dataclass
class BuildOptions:
    onnx: Path
    precision: str
    out: Path
    calib_cache: Path | None = None
    spec: Path | None = None
    workspace_mib: int = 1024
    dla_core: int | None = None
    timing_cache: Path | None = None
    max_batch: int = 8
    fp16_fallback: bool = True


@dataclass
class BuildPlan:
    """What the options mean for this TensorRT version: builder flags and network kind."""

    flags: list[str] = field(default_factory=list)  # trt.BuilderFlag names
    strongly_typed: bool = False
    calibration_cache: bool = False


def trt_version(text: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", text)
    if len(parts) < 2:
        raise HagridEdgeError(f"TensorRT version {text!r} is not MAJOR.MINOR")
    return int(parts[0]), int(parts[1])


def network_flags(trt: ModuleType, version: str, strongly_typed: bool) -> int:
    """``create_network``'s flags: explicit batch before TensorRT 10 (the only kind from 10 on, and the flag is
    gone in 11), strongly typed as planned (always, without a flag, in 11)."""
    v = trt_version(version)
    kinds = trt.NetworkDefinitionCreationFlag
    flags = 1 << int(kinds.EXPLICIT_BATCH) if v < (10, 0) else 0
    if strongly_typed and v[0] <= WEAK_TYPING_UNTIL:
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    return flags


def has_qdq(trt: ModuleType, network: object) -> bool:
    """Whether the parsed network has Q/DQ layers (explicit quantization)."""
    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in qdq for i in range(network.num_layers))


def plan_build(opts: BuildOptions, version: str, qdq: bool) -> BuildPlan:
    """Map the options onto TensorRT builder settings, refusing combinations this version cannot build."""
    v = trt_version(version)
    if opts.precision not in PRECISIONS:
        raise HagridEdgeError(f"--precision {opts.precision!r} is not one of {', '.join(PRECISIONS)}")
    if v < MIN_TRT:
        raise HagridEdgeError(f"TensorRT {version} is older than {MIN_TRT[0]}.{MIN_TRT[1]} (JetPack 5.1); upgrade "
                              "JetPack (JetPack 4.6's CUDA 10.2 has no cuda-python)")
    if opts.calib_cache is not None and (opts.precision != "int8" or qdq):
        raise HagridEdgeError(f"--calib-cache {opts.calib_cache}: a calibration cache goes with --precision int8 "
                              "and the FP32 ONNX (a QDQ ONNX carries its own scales)")
    if opts.dla_core is not None and opts.precision == "fp32":
        raise HagridEdgeError("--dla-core: the DLA runs FP16 or INT8 only; pass --precision fp16 or int8")
    plan = BuildPlan()
    if v[0] > WEAK_TYPING_UNTIL:  # strongly typed only: the types come from the ONNX
        if opts.precision == "fp16":
            raise HagridEdgeError(f"TensorRT {version} has no FP16 builder flag (strongly typed networks only): an "
                                  "FP16 engine comes from an FP16 ONNX (e.g. ModelOpt AutoCast), built with "
                                  "--precision fp32, which then keeps the file's own types")
        if opts.precision == "int8" and not qdq:
            raise HagridEdgeError(f"TensorRT {version} has no implicit INT8 (calibration caches); build from the "
                                  "QDQ ONNX written by quantize/calibrate.py")
        plan.strongly_typed = True
        if opts.dla_core is not None:
            plan.flags.append("GPU_FALLBACK")
        return plan
    if opts.precision == "fp16":
        plan.flags.append("FP16")
    elif opts.precision == "int8" and qdq:
        plan.strongly_typed = v >= STRONGLY_TYPED_FROM and opts.dla_core is None
        if not plan.strongly_typed:
            plan.flags += ["INT8", "FP16"] if opts.fp16_fallback else ["INT8"]
    elif opts.precision == "int8":
        if opts.calib_cache is None:
            raise HagridEdgeError(f"{opts.onnx} has no Q/DQ nodes: INT8 from an FP32 ONNX needs --calib-cache "
                                  "(quantize/calibrate.py --targets trt-cache), or pass the QDQ ONNX")
        plan.calibration_cache = True
        plan.flags += ["INT8", "FP16"] if opts.fp16_fallback else ["INT8"]
    if opts.dla_core is not None:
        plan.flags.append("GPU_FALLBACK")
    return plan


def device_identity(cudart: ModuleType, index: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "M.m"), read the way the runtime reads them."""
    err, props = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise HagridEdgeError(f"CUDA cannot read GPU {index} ({cudart.cudaGetErrorName(err)[1]!r})")
    name = props.name.split(b"\0")[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return name, f"{props.major}.{props.minor}"


def cache_calibrator(trt: ModuleType, cache: CalibrationCache) -> object:
    """An INT8 calibrator that serves the cache's scales (retagged for this TensorRT) and no batches."""
    if cache.algorithm not in CALIBRATORS:
        raise HagridEdgeError(f"calibration cache algorithm {cache.algorithm} is not supported "
                              f"(use one of {', '.join(CALIBRATORS)})")
    base = getattr(trt, CALIBRATORS[cache.algorithm])
    data = format_cache(retag(cache, trt.__version__)).encode("ascii")

    class CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # every scale comes from the cache

        def read_calibration_cache(self) -> bytes:
            return data

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return CacheCalibrator()


def _parse(trt: ModuleType, network: object, logger: object, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise HagridEdgeError(f"{onnx_path}: TensorRT's ONNX parser refused it ({'; '.join(errors) or 'no detail'})")


def _profile(trt: ModuleType, builder: object, network: object, max_batch: int) -> object | None:
    """An optimisation profile for dynamic batch inputs (batch 1 optimal, up to ``max_batch``)."""
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise HagridEdgeError(f"input {tensor.name!r} has dynamic non-batch dims {shape}; export with a fixed size")
        if shape[0] < 0:
            dynamic = True
            profile.set_shape(tensor.name, (1, *shape[1:]), (1, *shape[1:]), (max_batch, *shape[1:]))
    return profile if dynamic else None


def build_engine(opts: BuildOptions) -> EngineInfo:
    """Build ``opts.onnx`` into ``opts.out`` (+ ``<out>.json``) with the TensorRT installed here."""
    from hagrid_edge.deploy.jetson.tensorrt_backend import _import_cudart, _import_tensorrt

    spec = resolve_spec(opts.onnx, opts.spec)
    cache = read_cache(opts.calib_cache) if opts.calib_cache is not None else None
    trt = _import_tensorrt()
    gpu, capability = device_identity(_import_cudart())
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = network_flags(trt, trt.__version__, strongly_typed=False)
    network = builder.create_network(flags)
    _parse(trt, network, logger, opts.onnx)
    plan = plan_build(opts, trt.__version__, has_qdq(trt, network))
    if network_flags(trt, trt.__version__, plan.strongly_typed) != flags:
        # the network kind is fixed at creation: parse again into a strongly typed one
        network = builder.create_network(network_flags(trt, trt.__version__, plan.strongly_typed))
        _parse(trt, network, logger, opts.onnx)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)  # TensorRT >= 8.4
    for name in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = _profile(trt, builder, network, opts.max_batch)
    if profile is not None:
        config.add_optimization_profile(profile)
    if plan.calibration_cache:
        assert cache is not None  # plan_build requires it
        config.int8_calibrator = cache_calibrator(trt, cache)
        if profile is not None:
            config.set_calibration_profile(profile)
    if opts.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
    if opts.timing_cache is not None:
        seed = opts.timing_cache.read_bytes() if opts.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(seed), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HagridEdgeError(f"{opts.onnx}: TensorRT could not build a {opts.precision} engine (see its log above)")
    write_bytes_atomic(opts.out, bytes(serialized))
    if opts.timing_cache is not None:
        write_bytes_atomic(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
    info = EngineInfo(tensorrt_version=trt.__version__, gpu=gpu, compute_capability=capability,
                      precision=opts.precision, source_onnx=str(opts.onnx), source_onnx_sha256=sha256_file(opts.onnx),
                      calibration_cache=str(opts.calib_cache) if opts.calib_cache else None, dla_core=opts.dla_core)
    save_sidecar(with_engine_info(spec, info), opts.out)
    return info


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_engine.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, required=True, help="FP32 ONNX (with --calib-cache for INT8) or QDQ ONNX")
    p.add_argument("--precision", choices=PRECISIONS, required=True)
    p.add_argument("--out", type=Path, required=True, help="engine file to write (+ <engine>.json)")
    p.add_argument("--calib-cache", type=Path, help="TensorRT calibration cache (implicit INT8, TensorRT 8.5 to 10.x)")
    p.add_argument("--spec", type=Path, help="spec file for an ONNX with none embedded or beside it")
    p.add_argument("--workspace", type=int, default=1024, metavar="MIB", help="builder workspace (default 1024 MiB)")
    p.add_argument("--dla-core", type=int, help="build for this DLA core (GPU fallback on)")
    p.add_argument("--timing-cache", type=Path, help="timing cache file: read if present, updated after the build")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch for a dynamic-batch input (default 8)")
    p.add_argument("--no-fp16-fallback", action="store_true", help="INT8 layers fall back to FP32, not FP16")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    opts = BuildOptions(args.onnx, args.precision, args.out, args.calib_cache, args.spec, args.workspace,
                        args.dla_core, args.timing_cache, args.max_batch, not args.no_fp16_fallback)
    try:
        info = build_engine(opts)
    except HagridEdgeError as e:
        print(f"build_engine: error: {e}", file=sys.stderr)
        return 1
    print(f"{opts.out}: {info.precision} engine for {info.gpu} (sm {info.compute_capability}), "
          f"TensorRT {info.tensorrt_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
