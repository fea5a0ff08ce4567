"""The TensorRT adapter, with fakes of only what this machine lacks: the ``tensorrt`` module and the
CUDA runtime calls. The fake engine executes the real ONNX graph it wraps (ONNX Runtime standing in
for the GPU), so inputs, outputs, buffer sizes and copies go through the adapter for real. Each fake
behaves like the TensorRT version it reports: named I/O tensors from 8.5 (the bindings API only below
it), INT64 I/O only from 10.0 (8.x engines carry INT64 tensors as INT32).
"""

from __future__ import annotations

import ctypes
import enum
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from test_run_cli import SEQUENCE, make_video, read_events

from hagrid_edge.cli import main
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.deploy.jetson.engine_meta import EngineInfo, with_engine_info
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.pipeline import CropClassifier
from hagrid_edge.processing import crop_inputs
from hagrid_edge.spec import ModelSpec, resolve_spec, save_sidecar

MAGIC = b"FAKE-TRT-ENGINE\0"  # what the fake runtime accepts as a serialized engine
GPU, SM = "Orin", (8, 7)


# ---- fake CUDA runtime: "device" memory is host memory, bounds-checked ---------------------------
def fake_cudart() -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1})
    rt.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    ok = rt.cudaError_t.cudaSuccess
    rt.allocations = {}  # address -> buffer

    def malloc(n: int) -> tuple:
        buf = ctypes.create_string_buffer(n)
        rt.allocations[ctypes.addressof(buf)] = buf
        return ok, ctypes.addressof(buf)

    def memcpy(dst: int, src: int, n: int, kind: int, stream: int) -> tuple:
        dev = dst if kind == rt.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        if dev not in rt.allocations or n > len(rt.allocations[dev]):
            return (rt.cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, n)
        return (ok,)

    rt.cudaMalloc = malloc
    rt.cudaMemcpyAsync = memcpy
    rt.cudaFree = lambda ptr: (ok,) if rt.allocations.pop(ptr, None) is not None else (rt.cudaError_t(1),)
    rt.cudaSetDevice = lambda i: (ok,) if i == 0 else (rt.cudaError_t(1),)
    rt.cudaGetDeviceProperties = lambda i: (ok, types.SimpleNamespace(name=GPU.encode() + b"\0" * 8,
                                                                      major=SM[0], minor=SM[1]))
    rt.cudaStreamCreate = lambda: (ok, 7)
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaStreamDestroy = lambda s: (ok,)
    rt.cudaGetErrorName = lambda e: (ok, rt.cudaError_t(e).name.encode())
    return rt


# ---- fake tensorrt: an engine that is an ONNX graph, run by ONNX Runtime ---------------------------
class _Graph:
    """What both fake engine APIs share: I/O of the wrapped graph, shapes, profile, execution."""

    def __init__(self, trt: types.ModuleType, onnx_bytes: bytes, batches: tuple[int, int], dla_core: int) -> None:
        self.trt, self.session, self.batches = trt, ort.InferenceSession(onnx_bytes), batches
        self.dla_core = dla_core  # the runtime's DLA core when it deserialized this engine
        self.io = [(i.name, True, i.shape, i.type) for i in self.session.get_inputs()]
        self.io += [(o.name, False, o.shape, o.type) for o in self.session.get_outputs()]

    def static_shape(self, k: int) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self.io[k][2])

    def dtype(self, k: int) -> object:
        dt = self.trt.DataType
        return {"tensor(float)": dt.FLOAT, "tensor(int64)": getattr(dt, "INT64", dt.INT32)}[self.io[k][3]]

    def profile(self, k: int) -> tuple:
        """(min, opt, max) shapes of a dynamic-batch input."""
        shape = self.static_shape(k)
        return tuple((n, *shape[1:]) for n in (self.batches[0], self.batches[0], self.batches[1]))

    def accepts(self, k: int, shape: tuple) -> bool:
        """What TensorRT's shape setters return: whether ``shape`` lies within the profile."""
        lo, _, hi = self.profile(k)
        return len(shape) == len(lo) and all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True))


class _Context:
    def __init__(self, graph: _Graph) -> None:
        self.g, self.input_shapes, self.addresses = graph, {}, {}

    def shape(self, k: int) -> tuple[int, ...]:
        name, is_input, shape, _ = self.g.io[k]
        if is_input:
            return self.input_shapes[name]
        batch = next(iter(self.input_shapes.values()))[0]
        return tuple(batch if d == "batch_size" else d if isinstance(d, int) else -1 for d in shape)

    def execute(self) -> bool:
        feeds = {}
        for name, is_input, _, _ in self.g.io:
            if is_input:
                shape = self.input_shapes[name]
                raw = ctypes.string_at(self.addresses[name], int(np.prod(shape)) * 4)
                feeds[name] = np.frombuffer(raw, np.float32).reshape(shape)
        for k, value in enumerate(self.g.session.run(None, feeds)):
            name = self.g.io[len(feeds) + k][0]
            value = np.ascontiguousarray(value, dtype=self.g.trt.nptype(self.g.dtype(len(feeds) + k)))
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        return True


class EngineV3(_Graph):  # TensorRT >= 8.5: named I/O tensors
    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def _k(self, name: str) -> int:
        return [n for n, *_ in self.io].index(name)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def get_tensor_mode(self, name: str) -> object:
        return self.trt.TensorIOMode.INPUT if self.io[self._k(name)][1] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.static_shape(self._k(name))

    def get_tensor_dtype(self, name: str) -> object:
        return self.dtype(self._k(name))

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        return self.profile(self._k(name))

    def create_execution_context(self) -> object:
        engine = self

        class Context(_Context):
            def set_input_shape(self, name: str, shape: tuple) -> bool:
                if not engine.accepts(engine._k(name), tuple(shape)):
                    return False
                self.input_shapes[name] = tuple(shape)
                return True

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return self.shape(engine._k(name))

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                self.addresses[name] = ptr
                return True

            def execute_async_v3(self, stream: int) -> bool:
                assert isinstance(stream, int)
                return self.execute()

        return Context(self)


class EngineV2(_Graph):  # TensorRT 8.2 (JetPack 4.6): bindings
    @property
    def num_bindings(self) -> int:
        return len(self.io)

    def get_binding_name(self, i: int) -> str:
        return self.io[i][0]

    def get_binding_index(self, name: str) -> int:
        return [n for n, *_ in self.io].index(name)

    def binding_is_input(self, i: int) -> bool:
        return self.io[i][1]

    def get_binding_shape(self, i: int) -> tuple[int, ...]:
        return self.static_shape(i)

    def get_binding_dtype(self, i: int) -> object:
        return self.dtype(i)

    def get_profile_shape(self, profile: int, i: int) -> tuple:
        return self.profile(i)

    def create_execution_context(self) -> object:
        engine = self

        class Context(_Context):
            def set_binding_shape(self, i: int, shape: tuple) -> bool:
                if not engine.accepts(i, tuple(shape)):
                    return False
                self.input_shapes[engine.io[i][0]] = tuple(shape)
                return True

            def get_binding_shape(self, i: int) -> tuple[int, ...]:
                return self.shape(i)

            def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
                self.addresses = {engine.io[i][0]: ptr for i, ptr in enumerate(bindings)}
                return self.execute()

        return Context(self)


def fake_tensorrt(version: str, batches: tuple[int, int] = (1, 8)) -> types.ModuleType:
    """TensorRT ``version``'s Python API as far as the adapter uses it; engines profile ``batches`` (min, max)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major, minor = (int(p) for p in version.split(".")[:2])
    engine_cls = EngineV3 if (major, minor) >= (8, 5) else EngineV2
    trt.DataType = enum.Enum("DataType", "FLOAT HALF INT8 INT32" + (" INT64" if major >= 10 else ""))
    trt.TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    trt.nptype = lambda t: {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                            "INT64": np.int64}[t.name]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger, self.DLA_core = logger, -1  # -1: no DLA core chosen

        def deserialize_cuda_engine(self, data: bytes) -> object | None:
            if not data.startswith(MAGIC):
                return None  # what TensorRT does with a file that is not one of its engines
            return engine_cls(trt, data[len(MAGIC):], batches, self.DLA_core)

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.fixture
def hardware(monkeypatch: pytest.MonkeyPatch):
    """Install fakes of the hardware modules; returns a function that picks the TensorRT version/API."""
    rt = fake_cudart()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda.bindings = bindings
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, module)

    def install(version: str = "10.3.0", batches: tuple[int, int] = (1, 8)) -> types.SimpleNamespace:
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, batches))
        return types.SimpleNamespace(cudart=rt)

    return install


def make_engine(onnx: Path, out: Path, trt_version: str = "10.3.0", gpu: str = GPU, sm: str = "8.7",
                dla_core: int | None = None) -> Path:
    """A ".engine" file (the fake's format) with the sidecar spec and engine record the builder writes."""
    out.write_bytes(MAGIC + onnx.read_bytes())
    info = EngineInfo(tensorrt_version=trt_version, gpu=gpu, compute_capability=sm, precision="fp16",
                      source_onnx=str(onnx), source_onnx_sha256="0" * 64, dla_core=dla_core)
    save_sidecar(with_engine_info(resolve_spec(onnx), info), out)
    return out


@pytest.mark.parametrize("version", ["10.3.0", "8.5.2", "8.2.1"])  # JetPack 6.1, 5.1, 4.6
def test_engine_outputs_match_onnx(version: str, hardware, crop_classifier: Path, mini_root: Path,
                                   tmp_path: Path) -> None:
    hardware(version)
    engine = make_engine(crop_classifier, tmp_path / "cls.engine", trt_version=version)
    backend = open_backend(engine)
    assert backend.name == "tensorrt-cuda" and backend.max_batch == 8
    assert hasattr(backend.engine, "num_io_tensors") != hasattr(backend.engine, "num_bindings")
    assert hasattr(backend.engine, "num_bindings") == (version == "8.2.1")
    from test_run_cli import letterboxed

    frame = letterboxed(mini_root, *SEQUENCE[0])[:, :, ::-1]
    boxes = np.array([[280, 180, 390, 300], [380, 95, 490, 215], [10, 10, 60, 70]], np.float32)
    x = crop_inputs(frame, boxes, backend.spec)
    ref = ort.InferenceSession(str(crop_classifier)).run(None, {"input": x})[0]
    np.testing.assert_array_equal(backend.infer(x)["labels"], ref)
    ids, _ = CropClassifier(backend)(frame, np.repeat(boxes, 4, axis=0))  # 12 crops: batches of 8 + 4
    assert len(ids) == 12
    with pytest.raises(HagridEdgeError, match="input is float32, got float64"):
        backend.infer(x.astype(np.float64))


def test_run_with_engine_classifier(hardware, hand_detector: Path, crop_classifier: Path, mini_root: Path,
                                    tmp_path: Path) -> None:
    """``hagrid-edge run`` with the classifier as a TensorRT engine names the gestures in order."""
    hardware()
    engine = make_engine(crop_classifier, tmp_path / "cls.engine")
    video = tmp_path / "v.mp4"
    make_video(mini_root, video, hold=6)
    rc = main(["run", "--engine", str(hand_detector), "--classifier", str(engine), "--source", str(video),
               "--headless", "--events", str(tmp_path / "ev.jsonl"), "--debounce-n", "2", "--debounce-m", "3"])
    assert rc == 0
    starts = [e["gesture"] for e in read_events(tmp_path / "ev.jsonl") if e["event"] == "start"]
    assert starts == [g for g, _ in SEQUENCE]


@pytest.mark.parametrize("built, message", [
    (dict(trt_version="8.6.2"), "built with TensorRT 8.6.2, this is TensorRT 10.3.0"),
    (dict(gpu="Xavier", sm="7.2"), "built for Xavier (sm 7.2), this is Orin (sm 8.7)"),
])
def test_engine_from_elsewhere_refused_with_rebuild_command(built: dict, message: str, hardware,
                                                            crop_classifier: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    hardware("10.3.0")
    engine = make_engine(crop_classifier, tmp_path / "cls.engine", **built)
    rc = main(["run", "--engine", str(engine), "--source", str(tmp_path), "--headless"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert message in err[0]
    assert (f"rebuild it here: python deploy/jetson/build_engine.py --onnx {crop_classifier} --precision fp16 "
            f"--out {engine}") in err[0]


def test_not_an_engine_and_spec_mismatch(hardware, crop_classifier: Path, hand_detector: Path,
                                         tmp_path: Path) -> None:
    hardware()
    engine = make_engine(crop_classifier, tmp_path / "cls.engine")
    engine.write_bytes(b"\x7fELF" + bytes(200))
    with pytest.raises(HagridEdgeError, match="TensorRT cannot deserialize it .* rebuild it here"):
        open_backend(engine)

    engine = make_engine(crop_classifier, tmp_path / "cls2.engine")
    spec = json.loads((tmp_path / "cls2.engine.json").read_text())
    spec["output_names"] = {"logits": "probs"}
    (tmp_path / "cls2.engine.json").write_text(json.dumps(spec))
    with pytest.raises(HagridEdgeError, match=r"outputs \['probs'\] the engine lacks \['labels'\]"):
        open_backend(engine)

    # NMS inside the graph: output sizes depend on the data, which a static buffer plan cannot hold
    det = make_engine(hand_detector, tmp_path / "det.engine")
    with pytest.raises(HagridEdgeError, match="data-dependent shape"):
        open_backend(det)


def test_engine_without_record_or_runtime(crop_classifier: Path, tmp_path: Path, hardware) -> None:
    engine = tmp_path / "cls.trt"
    engine.write_bytes(MAGIC + crop_classifier.read_bytes())
    spec: ModelSpec = resolve_spec(crop_classifier)
    save_sidecar(spec, engine)
    if importlib.util.find_spec("tensorrt") is None:  # this machine: the real import fails with a hint
        with pytest.raises(HagridEdgeError, match="TensorRT's Python bindings are not installed"):
            open_backend(engine)
    hardware()
    with pytest.raises(HagridEdgeError, match="no provenance.engine record"):
        open_backend(engine)


@pytest.mark.parametrize("version", ["10.3.0", "8.2.1"])
def test_dla_core_and_shapes_outside_the_profile(version: str, hardware, crop_classifier: Path,
                                                 tmp_path: Path) -> None:
    """The DLA core recorded at build time is the one the engine is loaded onto; a shape the engine's
    profile refuses (TensorRT's shape setter returns False) or a wrong input size is one clear error."""
    hardware(version)
    assert open_backend(make_engine(crop_classifier, tmp_path / "gpu.engine", trt_version=version)).engine.dla_core == -1
    backend = open_backend(make_engine(crop_classifier, tmp_path / "dla.engine", trt_version=version, dla_core=1))
    assert backend.engine.dla_core == 1
    x = np.zeros((1, *backend._in_dims), np.float32)
    with pytest.raises(HagridEdgeError, match=r"input of shape \(1, 3, 64, 64\), the engine takes \(N, 3, 128, 128\)"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))

    hardware(version, batches=(2, 8))  # an engine built with a smallest batch of 2
    backend = open_backend(make_engine(crop_classifier, tmp_path / "min2.engine", trt_version=version))
    assert len(backend.infer(np.repeat(x, 2, axis=0))["labels"]) == 2
    with pytest.raises(HagridEdgeError, match=r"refused input shape \(1, 3, 128, 128\) for 'input' \(outside the "
                                              r"engine's optimisation profile\)"):
        backend.infer(x)
