"""TensorRT adapter for ``.trt`` / ``.engine`` files, with CUDA through cuda-python.

Before deserializing, the engine's record (``provenance.engine`` in its ``<engine>.json`` sidecar)
is checked against the running TensorRT version and GPU; an engine from elsewhere is refused with
the command that rebuilds it here. TensorRT's named I/O tensors (``execute_async_v3``, TensorRT >= 8.5:
JetPack 5.1 and 6, and 10.x / 11.x elsewhere) are the API used; older TensorRT is refused (JetPack 4.6's
TensorRT 8.2 comes with CUDA 10.2, for which there is no cuda-python). CUDA comes from cuda-python in
either layout: ``cuda.bindings.runtime`` (cuda-python >= 12.6, JetPack 6) or ``cuda.cudart`` (the
cuda-python 11.8 of JetPack 5's CUDA 11.4 and Python 3.8). An engine built for a DLA core is loaded
onto that core. Outputs must have static shapes (raw SSD heads, logits): an engine with NMS inside has
data-dependent output sizes and is refused. tests/test_tensorrt_conformance.py checks every TensorRT
name used here against the real bindings of each supported line.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from hagrid_edge.deploy.jetson.build_engine import MIN_TRT, device_identity, trt_version
from hagrid_edge.deploy.jetson.engine_meta import check_compatible, engine_info
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.spec import ModelSpec


def _import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise HagridEdgeError("TensorRT's Python bindings are not installed: on a Jetson they come with JetPack "
                              "(apt-get install python3-libnvinfer); see deploy/jetson/README.md") from None
    return tensorrt


def _import_cudart() -> ModuleType:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6 (JetPack 6)
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python 11.8 (JetPack 5: CUDA 11.4, Python 3.8)
        except ImportError:
            raise HagridEdgeError("cuda-python is not installed: pip install 'hagrid-edge[jetson]' "
                                  "(cuda-python matching the JetPack CUDA version)") from None
    return runtime


class _Cuda:
    """The few CUDA runtime calls the adapter needs, with errors turned into one clear line."""

    def __init__(self, rt: ModuleType, engine: Path) -> None:
        self.rt, self.engine = rt, engine

    def call(self, name: str, *args: Any) -> Any:
        err, *values = getattr(self.rt, name)(*args)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise HagridEdgeError(f"{self.engine}: CUDA {name} failed ({self.rt.cudaGetErrorName(err)[1]!r})")
        return values[0] if len(values) == 1 else None

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes,
                  self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes,
                  self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)


def _device_index(device: str) -> int:
    """``cpu`` (the generic default) and ``cuda`` mean GPU 0; ``cuda:N`` GPU N."""
    if device in ("cpu", "cuda", "tensorrt"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise HagridEdgeError(f"--device {device!r}: TensorRT runs on a GPU: cuda or cuda:N")


class TensorRTBackend:
    def __init__(self, path: Path, spec: ModelSpec, threads: int | None = None, device: str = "cpu") -> None:
        trt = _import_tensorrt()
        if trt_version(trt.__version__) < MIN_TRT:
            raise HagridEdgeError(f"{path}: TensorRT {trt.__version__} is older than {MIN_TRT[0]}.{MIN_TRT[1]} "
                                  "(JetPack 5.1), the oldest TensorRT hagrid-edge runs; upgrade JetPack")
        self.cuda = _Cuda(_import_cudart(), path)
        self.path, self.spec, self.name = path, spec, "tensorrt-cuda"
        info = engine_info(spec, path)
        index = _device_index(device)
        self.cuda.call("cudaSetDevice", index)
        gpu, compute_capability = device_identity(self.cuda.rt, index)  # as the builder recorded them
        check_compatible(info, path, trt.__version__, gpu, compute_capability)

        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if info.dla_core is not None:  # DLA engines deserialize onto the runtime's DLA core
            self._runtime.DLA_core = info.dla_core
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise HagridEdgeError(f"{path}: TensorRT cannot deserialize it (not an engine, or a damaged one); "
                                  f"rebuild it here: {info.rebuild_command(path)}")
        self.context = self.engine.create_execution_context()
        io = self._io(trt)
        inputs = [n for n, (is_in, _, _) in io.items() if is_in]
        outputs = {n for n, (is_in, _, _) in io.items() if not is_in}
        if spec.input_name not in inputs:
            raise HagridEdgeError(f"{path}: the spec's input {spec.input_name!r} is not an engine input {inputs}")
        missing = sorted(set(spec.output_names.values()) - outputs)
        if missing:
            raise HagridEdgeError(f"{path}: the spec names outputs {missing} the engine lacks {sorted(outputs)}")
        _, in_shape, in_dtype = io[spec.input_name]
        if in_dtype != np.dtype(spec.input_dtype):
            raise HagridEdgeError(f"{path}: the engine's input is {in_dtype}, the spec says {spec.input_dtype}")
        self._in_dtype, self._in_dims = in_dtype, tuple(in_shape[1:])
        self._dynamic_batch = in_shape[0] < 0
        max_shape = self._max_input_shape(in_shape)
        self.max_batch = int(max_shape[0])
        self._set_input_shape(max_shape)
        self._stream = self.cuda.call("cudaStreamCreate")
        self._buffers: dict[str, int] = {}
        self._out_dtypes: dict[str, np.dtype] = {}
        for name, (is_in, _, dtype) in io.items():
            shape = max_shape if is_in else self._shape(name)
            if any(d < 0 for d in shape):
                raise HagridEdgeError(f"{path}: output {name!r} has a data-dependent shape {tuple(shape)} (NMS "
                                      "inside the engine); build the engine from an ONNX with raw outputs (ssd_raw)")
            self._buffers[name] = self.cuda.call("cudaMalloc", max(int(np.prod(shape)) * dtype.itemsize, 1))
            if not is_in:
                self._out_dtypes[name] = dtype
        for name, ptr in self._buffers.items():
            self.context.set_tensor_address(name, ptr)

    # ---- TensorRT's named I/O tensors -----------------------------------------------------------
    def _io(self, trt: ModuleType) -> dict[str, tuple[bool, tuple[int, ...], np.dtype]]:
        """name -> (is input, shape, numpy dtype), in the engine's order."""
        e = self.engine
        return {(n := e.get_tensor_name(i)): (e.get_tensor_mode(n) == trt.TensorIOMode.INPUT,
                                              tuple(e.get_tensor_shape(n)), np.dtype(trt.nptype(e.get_tensor_dtype(n))))
                for i in range(e.num_io_tensors)}

    def _max_input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if all(d >= 0 for d in shape):
            return shape
        return tuple(self.engine.get_tensor_profile_shape(self.spec.input_name, 0)[2])  # (min, opt, max)

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        name = self.spec.input_name
        ok = self.context.set_input_shape(name, shape)
        if not ok:  # outside the engine's optimisation profile
            raise HagridEdgeError(f"{self.path}: TensorRT refused input shape {tuple(shape)} for {name!r} "
                                  "(outside the engine's optimisation profile); rebuild it with a profile that "
                                  "covers it (build_engine.py --max-batch)")

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    # ---- inference ------------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.dtype != self._in_dtype:
            raise HagridEdgeError(f"{self.path}: input is {self._in_dtype}, got {batch.dtype}; "
                                  "the spec's input_dtype does not match the engine")
        if tuple(batch.shape[1:]) != self._in_dims:
            raise HagridEdgeError(f"{self.path}: input of shape {tuple(batch.shape)}, the engine takes "
                                  f"(N, {', '.join(map(str, self._in_dims))})")
        if len(batch) > self.max_batch or (not self._dynamic_batch and len(batch) != self.max_batch):
            raise HagridEdgeError(f"{self.path}: batch of {len(batch)}, the engine takes "
                                  f"{'up to ' if self._dynamic_batch else ''}{self.max_batch}")
        if self._dynamic_batch:
            self._set_input_shape(batch.shape)
        batch = np.ascontiguousarray(batch)
        self.cuda.h2d(self._buffers[self.spec.input_name], batch, self._stream)
        ok = self.context.execute_async_v3(int(self._stream))
        if not ok:
            raise HagridEdgeError(f"{self.path}: TensorRT execution failed")
        out = {name: np.empty(self._shape(name), dtype) for name, dtype in self._out_dtypes.items()}
        for name, host in out.items():
            self.cuda.d2h(host, self._buffers[name], self._stream)
        self.cuda.call("cudaStreamSynchronize", self._stream)
        return out

    def __del__(self) -> None:
        buffers = getattr(self, "_buffers", {})
        for ptr in buffers.values():
            self.cuda.rt.cudaFree(ptr)
        if getattr(self, "_stream", None) is not None:
            self.cuda.rt.cudaStreamDestroy(self._stream)
