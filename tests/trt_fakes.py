"""Fakes of the hardware libraries deploy/jetson calls, each as the version it claims to be: TensorRT's
Python API (builder and runtime) and cuda-python's runtime module in the layout of that TensorRT's JetPack.

A fake offers only names the real bindings of its version export, on the class that holds them in
TensorRT: ``tests/test_tensorrt_conformance.py`` reads the names out of the real bindings wheels and fails
when a fake offers one its version lacks. A name a fake lacks raises AttributeError, so code that calls
it fails here as it would on the board; whatever a fake keeps for the tests to read is underscored
(``trt._built``, ``config._flags``). The fake engine is an ONNX graph that ONNX Runtime runs, so inputs,
outputs, buffer sizes and copies go through the adapter for real.

Each TensorRT line we claim, with what ships beside it (README of deploy/jetson); JetPack 4.6 (TensorRT
8.2, CUDA 10.2, Python 3.6) is not one: cuda-python starts at CUDA 11, so nothing of ours runs there.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"FAKE-TRT-ENGINE\0"  # what the fake runtime accepts as a serialized engine
GPU, SM = "Orin", (8, 7)


@dataclass(frozen=True)
class Line:
    """A TensorRT line we claim: the version a fake reports, its platform, and the nearest real bindings
    wheel on PyPI whose names it is checked against (pip requirement, Python version, platform tag)."""

    key: str
    version: str
    platform: str
    cuda_python: str  # what pip resolves for the [jetson] extra there
    cuda_module: str  # the cuda-python module the backend imports there
    wheel: str
    wheel_python: str
    wheel_platform: str

    @property
    def major_minor(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)


# cuda-python on JetPack 5 (Python 3.8, aarch64): "cuda-python<12" resolves to 11.8.2, the last 11.x with a cp38
# wheel (11.8.6/11.8.7 need cuda-bindings, which has none); it has cuda.cudart and no cuda.bindings. On
# JetPack 6 (Python 3.10) "cuda-python>=12,<13" gives cuda-bindings 12.9: cuda.bindings.runtime (and a
# deprecated cuda.cudart shim). TensorRT 8.5.2 and 8.6.2 (JetPack's) are not on PyPI: 8.6.1 is their nearest.
LINES = (
    Line("8.5", "8.5.2.2", "JetPack 5.1 (L4T R35, CUDA 11.4, Python 3.8)", "cuda-python==11.8.2", "cuda.cudart",
         "tensorrt-bindings==8.6.1", "3.10", "manylinux_2_17_x86_64"),
    Line("8.6", "8.6.2.3", "JetPack 6.0 (L4T R36.3, CUDA 12.2, Python 3.10)", "cuda-bindings==12.9.0",
         "cuda.bindings.runtime", "tensorrt-bindings==8.6.1", "3.10", "manylinux_2_17_x86_64"),
    Line("10.3", "10.3.0.30", "JetPack 6.1 / 6.2 (L4T R36.4, CUDA 12.6, Python 3.10)", "cuda-bindings==12.9.0",
         "cuda.bindings.runtime", "tensorrt-cu12-bindings==10.3.0", "3.10", "manylinux_2_17_x86_64"),
    Line("10.x", "10.16.1.11", "the newest TensorRT 10 (CUDA 12, x86_64 / SBSA GPUs)", "cuda-bindings==12.9.0",
         "cuda.bindings.runtime", "tensorrt-cu12-bindings==10.16.1.11", "3.11", "manylinux_2_28_x86_64"),
    Line("11.x", "11.4.0.106", "TensorRT 11 (CUDA 12, x86_64 / SBSA GPUs)", "cuda-bindings==12.9.0",
         "cuda.bindings.runtime", "tensorrt-cu12-bindings==11.4.0.106", "3.11", "manylinux_2_28_x86_64"),
)


def line_of(version: str) -> Line:
    """The claimed line a TensorRT version belongs to (10.3 on JetPack 6; any other 10.x is the newest's)."""
    major, minor = (int(p) for p in version.split(".")[:2])
    for line in LINES:
        if (major, minor) == line.major_minor or (major >= 10 and major == line.major_minor[0]
                                                  and line.key.endswith(".x") and (major, minor) != (10, 3)):
            return line
    raise ValueError(f"TensorRT {version} is not a line hagrid-edge claims ({', '.join(li.key for li in LINES)})")


# ---- the fakes' common base ---------------------------------------------------------------------
class _Fake:
    """A fake TensorRT class: public attributes are the API it offers (declared on the class, so the
    conformance test can list them); a name it lacks raises AttributeError naming the version."""

    _version = "?"

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and not hasattr(type(self), name):
            raise AttributeError(f"the fake {type(self).__name__} of TensorRT {self._version} declares no {name!r}")
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only called for names the object lacks
        raise AttributeError(f"{type(self).__name__}.{name}")


class _EnumType(enum.EnumMeta):
    def __getattr__(cls, name: str) -> Any:  # only called for names the enum lacks
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"{cls.__name__}.{name}")


class _TrtEnum(enum.IntEnum, metaclass=_EnumType):
    """A TensorRT enum: a value it lacks raises AttributeError naming enum and value."""


def _enum(name: str, members: list[str] | dict[str, int]) -> type[enum.Enum]:
    return _TrtEnum(name, members if isinstance(members, dict) else {m: i for i, m in enumerate(members)})


def public_surface(module: types.ModuleType) -> dict[str, set[str]]:
    """What a fake module offers: {module name: its names, class name: that class's names}."""
    out = {module.__name__: {n for n in vars(module) if not n.startswith("_")}}
    for name, value in vars(module).items():
        if name.startswith("_") or not isinstance(value, type):
            continue
        if issubclass(value, enum.Enum):
            out[name] = set(value.__members__)
        else:
            out[name] = {n for k in value.__mro__ if k not in (_Fake, object) for n in vars(k) if not n.startswith("_")}
    return out


# ---- fake tensorrt ------------------------------------------------------------------------------
def fake_tensorrt(version: str, batches: tuple[int, int] = (1, 8), fail_parse: bool = False,
                  fail_build: bool = False) -> types.ModuleType:
    """TensorRT ``version``'s Python API as far as deploy/jetson uses it. The builder records what it was asked
    (``trt._built``, ``trt._networks``); engines profile ``batches`` (min, max)."""
    import onnx
    import onnxruntime as ort

    major, minor = (int(p) for p in version.split(".")[:2])
    weak = major <= 10  # TensorRT 11: strongly typed networks only
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt._built, trt._networks = {}, []

    class Base(_Fake):
        _version = version

    trt.DataType = _enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", *(["INT64"] if major >= 10 else [])])
    trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", {
        **({"EXPLICIT_BATCH": 0} if weak else {}), **({"STRONGLY_TYPED": 1} if major >= 10 else {})})
    trt.LayerType = _enum("LayerType", ["CONVOLUTION", "ACTIVATION", "ELEMENTWISE", "QUANTIZE", "DEQUANTIZE"])
    trt.BuilderFlag = _enum("BuilderFlag", [*(["FP16", "INT8"] if weak else []), "GPU_FALLBACK"])
    trt.MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE"])
    trt.DeviceType = _enum("DeviceType", ["GPU", "DLA"])
    numpy_of = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64}

    def nptype(t: enum.Enum) -> type:
        return numpy_of[t.name]

    trt.nptype = nptype
    layer_of = {"Conv": trt.LayerType.CONVOLUTION, "Relu": trt.LayerType.ACTIVATION,
                "QuantizeLinear": trt.LayerType.QUANTIZE, "DequantizeLinear": trt.LayerType.DEQUANTIZE}

    class Logger(Base):
        WARNING = 2

        def __init__(self, level: int) -> None:
            self._level = level

    # -- builder side --
    class ITensor(Base):
        name = shape = None

        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class ILayer(Base):
        type = None

        def __init__(self, kind: enum.Enum) -> None:
            self.type = kind

    class INetworkDefinition(Base):
        def __init__(self, flags: int) -> None:
            self._flags, self._inputs, self._layers = flags, [], []

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        def get_input(self, i: int) -> ITensor:
            return self._inputs[i]

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        def get_layer(self, i: int) -> ILayer:
            return self._layers[i]

    class ParserError(Base):
        def desc(self) -> str:
            return "Unsupported ONNX op: Frobnicate"

    class OnnxParser(Base):
        num_errors = 0

        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            self._network = network

        def parse(self, data: bytes) -> bool:
            if fail_parse:
                self.num_errors = 1
                return False
            model = onnx.load_from_string(data)
            for i in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                self._network._inputs.append(ITensor(i.name, dims))
            for node in model.graph.node:  # one layer per node, Q/DQ as TensorRT's own Q/DQ layers
                self._network._layers.append(ILayer(layer_of.get(node.op_type, trt.LayerType.ELEMENTWISE)))
            return True

        def get_error(self, i: int) -> ParserError:
            return ParserError()

    class IOptimizationProfile(Base):
        def __init__(self) -> None:
            self._shapes = {}

        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            self._shapes[name] = (lo, opt, hi)

    class ITimingCache(Base):
        def __init__(self, seed: bytes) -> None:
            self._seed = seed

        def serialize(self) -> bytes:
            return b"timing:" + self._seed

    class IBuilderConfig(Base):
        default_device_type = None
        DLA_core = -1

        def __init__(self) -> None:
            self._flags, self._profiles, self._pool, self._timing = set(), [], {}, None
            self._calibration_profile = None
            self.default_device_type = trt.DeviceType.GPU

        def set_flag(self, flag: enum.Enum) -> None:
            self._flags.add(flag.name)

        def add_optimization_profile(self, p: IOptimizationProfile) -> int:
            self._profiles.append(p)
            return len(self._profiles) - 1

        def set_memory_pool_limit(self, pool: enum.Enum, size: int) -> None:  # TensorRT >= 8.4
            self._pool[pool.name] = size

        def create_timing_cache(self, seed: bytes) -> ITimingCache:
            return ITimingCache(seed)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            self._timing = cache
            return True

        def get_timing_cache(self) -> ITimingCache:
            return self._timing

    if weak:  # implicit INT8: calibrators, until TensorRT 10
        IBuilderConfig.int8_calibrator = None

        def set_calibration_profile(self: IBuilderConfig, p: IOptimizationProfile) -> bool:
            self._calibration_profile = p
            return True

        IBuilderConfig.set_calibration_profile = set_calibration_profile

        class Calibrator(Base):
            def __init__(self) -> None:
                pass

            def get_batch_size(self) -> int:
                raise NotImplementedError

            def get_batch(self, names: list[str]) -> object:
                raise NotImplementedError

            def read_calibration_cache(self) -> bytes:
                raise NotImplementedError

            def write_calibration_cache(self, cache: bytes) -> None:
                raise NotImplementedError

        for name in ("IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator"):
            setattr(trt, name, type(name, (Calibrator,), {}))

    class Builder(Base):
        def __init__(self, logger: Logger) -> None:
            self._logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            trt._networks.append(INetworkDefinition(flags))
            return trt._networks[-1]

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
            calibrator = getattr(config, "int8_calibrator", None)  # TensorRT reads the calibrator's cache first
            cache = calibrator.read_calibration_cache() if calibrator else None
            trt._built = {"network": network, "config": config, "cache": cache}
            return None if fail_build else b"ENGINE"

    # -- runtime side: an engine is an ONNX graph that ONNX Runtime runs --
    class ICudaEngine(Base):
        def __init__(self, onnx_bytes: bytes, dla_core: int) -> None:
            self._session, self._dla_core = ort.InferenceSession(onnx_bytes), dla_core
            self._io = [(i.name, True, i.shape, i.type) for i in self._session.get_inputs()]
            self._io += [(o.name, False, o.shape, o.type) for o in self._session.get_outputs()]

        def _k(self, name: str) -> int:
            return [n for n, *_ in self._io].index(name)

        def _static_shape(self, k: int) -> tuple[int, ...]:
            return tuple(d if isinstance(d, int) else -1 for d in self._io[k][2])

        def _profile(self, k: int) -> tuple:
            shape = self._static_shape(k)
            return tuple((n, *shape[1:]) for n in (batches[0], batches[0], batches[1]))

        def _accepts(self, k: int, shape: tuple) -> bool:
            lo, _, hi = self._profile(k)
            return len(shape) == len(lo) and all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True))

        @property
        def num_io_tensors(self) -> int:
            return len(self._io)

        def get_tensor_name(self, i: int) -> str:
            return self._io[i][0]

        def get_tensor_mode(self, name: str) -> enum.Enum:
            return trt.TensorIOMode.INPUT if self._io[self._k(name)][1] else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._static_shape(self._k(name))

        def get_tensor_dtype(self, name: str) -> enum.Enum:
            kind = self._io[self._k(name)][3]
            dt = trt.DataType
            return {"tensor(float)": dt.FLOAT, "tensor(int64)": getattr(dt, "INT64", dt.INT32)}[kind]

        def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
            return self._profile(self._k(name))

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext(self)

    class IExecutionContext(Base):
        def __init__(self, engine: ICudaEngine) -> None:
            self._engine, self._input_shapes, self._addresses = engine, {}, {}

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            if not self._engine._accepts(self._engine._k(name), tuple(shape)):
                return False
            self._input_shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            _, is_input, shape, _ = self._engine._io[self._engine._k(name)]
            if is_input:
                return self._input_shapes[name]
            batch = next(iter(self._input_shapes.values()))[0]
            return tuple(batch if d == "batch_size" else d if isinstance(d, int) else -1 for d in shape)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self._addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            assert isinstance(stream_handle, int)
            e, feeds = self._engine, {}
            for name, is_input, _, _ in e._io:
                if is_input:
                    shape = self._input_shapes[name]
                    raw = ctypes.string_at(self._addresses[name], int(np.prod(shape)) * 4)
                    feeds[name] = np.frombuffer(raw, np.float32).reshape(shape)
            for k, value in enumerate(e._session.run(None, feeds)):
                name = e._io[len(feeds) + k][0]
                value = np.ascontiguousarray(value, dtype=nptype(e.get_tensor_dtype(name)))
                ctypes.memmove(self._addresses[name], value.ctypes.data, value.nbytes)
            return True

    class Runtime(Base):
        DLA_core = -1  # -1: no DLA core chosen

        def __init__(self, logger: Logger) -> None:
            self._logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
            if not data.startswith(MAGIC):
                return None  # what TensorRT does with a file that is not one of its engines
            return ICudaEngine(data[len(MAGIC):], self.DLA_core)

    for cls in (Logger, ITensor, ILayer, INetworkDefinition, ParserError, OnnxParser, IOptimizationProfile,
                ITimingCache, IBuilderConfig, Builder, ICudaEngine, IExecutionContext, Runtime):
        setattr(trt, cls.__name__, cls)

    def missing(name: str) -> Any:
        raise AttributeError(f"tensorrt.{name}")

    trt.__getattr__ = missing  # PEP 562: what `trt.X` does for a name the module lacks
    return trt


# ---- fake cuda-python runtime: "device" memory is host memory, bounds-checked --------------------
class cudaDeviceProp:  # noqa: N801 (cuda-python's name)
    name = major = minor = None

    def __init__(self, name: bytes, major: int, minor: int) -> None:
        self.name, self.major, self.minor = name, major, minor


def fake_cudart(module_name: str) -> types.ModuleType:
    """cuda-python's runtime module (``cuda.cudart`` or ``cuda.bindings.runtime``) as far as deploy/jetson uses it."""
    rt = types.ModuleType(module_name)
    rt.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1})
    rt.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    rt.cudaDeviceProp = cudaDeviceProp
    ok = rt.cudaError_t.cudaSuccess
    rt._allocations = {}  # address -> buffer

    def cudaMalloc(n: int) -> tuple:  # noqa: N802 (CUDA's names)
        buf = ctypes.create_string_buffer(n)
        rt._allocations[ctypes.addressof(buf)] = buf
        return ok, ctypes.addressof(buf)

    def cudaMemcpyAsync(dst: int, src: int, n: int, kind: int, stream: int) -> tuple:  # noqa: N802
        dev = dst if kind == rt.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        if dev not in rt._allocations or n > len(rt._allocations[dev]):
            return (rt.cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, n)
        return (ok,)

    def cudaFree(ptr: int) -> tuple:  # noqa: N802
        return (ok,) if rt._allocations.pop(ptr, None) is not None else (rt.cudaError_t(1),)

    rt.cudaMalloc, rt.cudaMemcpyAsync, rt.cudaFree = cudaMalloc, cudaMemcpyAsync, cudaFree
    rt.cudaSetDevice = lambda i: (ok,) if i == 0 else (rt.cudaError_t(1),)
    rt.cudaGetDeviceProperties = lambda i: (ok, cudaDeviceProp(GPU.encode() + b"\0" * 8, *SM))
    rt.cudaStreamCreate = lambda: (ok, 7)
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaStreamDestroy = lambda s: (ok,)
    rt.cudaGetErrorName = lambda e: (ok, rt.cudaError_t(e).name.encode())
    return rt


def cuda_modules(module_name: str, rt: types.ModuleType) -> dict[str, types.ModuleType | None]:
    """sys.modules entries for cuda-python in one layout; the other layout's modules are absent (None)."""
    cuda = types.ModuleType("cuda")
    if module_name == "cuda.cudart":  # cuda-python 11.8: no cuda.bindings
        cuda.cudart = rt
        return {"cuda": cuda, "cuda.cudart": rt, "cuda.bindings": None, "cuda.bindings.runtime": None}
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda.bindings = bindings
    return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt, "cuda.cudart": None}


def install(monkeypatch: Any, version: str, **fake_options: Any) -> types.SimpleNamespace:
    """The fake TensorRT ``version`` in sys.modules with the cuda-python of its line; refuses unclaimed versions."""
    line = line_of(version)
    trt, rt = fake_tensorrt(version, **fake_options), fake_cudart(line.cuda_module)
    for name, module in {"tensorrt": trt, **cuda_modules(line.cuda_module, rt)}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(trt=trt, cudart=rt, line=line)
