"""deploy/jetson/build_engine.py around the TensorRT build: option mapping, version refusal, the cache
calibrator, metadata. Only the hardware calls are faked: the ``tensorrt`` module (its builder records
what it was asked to do) and the CUDA device query."""

from __future__ import annotations

import enum
import shlex
import sys
import types
from pathlib import Path

import onnx
import pytest

from hagrid_edge.deploy.jetson.build_engine import BuildOptions, build_engine, main, parser, plan_build
from hagrid_edge.deploy.jetson.engine_meta import check_compatible, engine_info
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.quantize.calib_data import calibration_batches
from hagrid_edge.quantize.onnx_files import save_onnx_with_spec
from hagrid_edge.quantize.onnx_int8 import collect_ranges, name_nodes, quantize_qdq, upgrade_opset
from hagrid_edge.quantize.trt_cache import parse_cache, write_cache
from hagrid_edge.spec import load_spec_file, resolve_spec, sha256_file, sidecar_path

GPU, SM = "Orin", (8, 7)


# ---- fakes of the hardware libraries ------------------------------------------------------------
def fake_tensorrt(version: str, fail_parse: bool = False, fail_build: bool = False) -> types.ModuleType:
    """TensorRT ``version``'s builder API as far as build_engine uses it (strong typing only from 10.x)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, **(
        {"STRONGLY_TYPED": 1} if major >= 10 else {})})
    trt.LayerType = enum.Enum("LayerType", "CONVOLUTION ACTIVATION QUANTIZE DEQUANTIZE OTHER")
    layer_of = {"Conv": trt.LayerType.CONVOLUTION, "Relu": trt.LayerType.ACTIVATION,
                "QuantizeLinear": trt.LayerType.QUANTIZE, "DequantizeLinear": trt.LayerType.DEQUANTIZE}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 INT8 GPU_FALLBACK")
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.DeviceType = enum.IntEnum("DeviceType", "GPU DLA")
    trt.built, trt.networks = {}, []  # what the last build was asked to do; every network created

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Calibrator:
        def __init__(self) -> None:
            pass

    for name in ("IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator"):
        setattr(trt, name, type(name, (Calibrator,), {}))

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.layers = flags, [], []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> types.SimpleNamespace:
            return self.layers[i]

    class Error:
        def desc(self) -> str:
            return "Unsupported ONNX op: Frobnicate"

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.num_errors = network, 0

        def parse(self, data: bytes) -> bool:
            if fail_parse:
                self.num_errors = 1
                return False
            model = onnx.load_from_string(data)
            for i in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(i.name, dims))
            for node in model.graph.node:  # one layer per node, Q/DQ as TensorRT's own Q/DQ layers
                self.network.layers.append(types.SimpleNamespace(type=layer_of.get(node.op_type, trt.LayerType.OTHER)))
            return True

        def get_error(self, i: int) -> Error:
            return Error()

    class Profile:
        def __init__(self) -> None:
            self.shapes = {}

        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            self.shapes[name] = (lo, opt, hi)

    class TimingCache:
        def __init__(self, seed: bytes) -> None:
            self.seed = seed

        def serialize(self) -> bytes:
            return b"timing:" + self.seed

    class Config:
        def __init__(self) -> None:
            self.flags, self.profiles, self.int8_calibrator = set(), [], None
            self.default_device_type, self.DLA_core, self.calibration_profile = trt.DeviceType.GPU, -1, None
            self.max_workspace_size, self.pool, self.timing = 0, {}, None

        def set_flag(self, flag: enum.IntEnum) -> None:
            self.flags.add(flag.name)

        def add_optimization_profile(self, p: Profile) -> None:
            self.profiles.append(p)

        def set_calibration_profile(self, p: Profile) -> None:
            self.calibration_profile = p

        def create_timing_cache(self, seed: bytes) -> TimingCache:
            return TimingCache(seed)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> None:
            self.timing = cache

        def get_timing_cache(self) -> TimingCache:
            return self.timing

    if version.split(".")[0] != "8" or int(version.split(".")[1]) >= 4:
        Config.set_memory_pool_limit = lambda self, pool, size: self.pool.__setitem__(pool.name, size)

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            trt.networks.append(Network(flags))
            return trt.networks[-1]

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            # what TensorRT does with a calibrator before building: read its cache
            cache = config.int8_calibrator.read_calibration_cache() if config.int8_calibrator else None
            trt.built = {"network": network, "config": config, "cache": cache}
            return None if fail_build else b"ENGINE"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


def install(monkeypatch, trt: types.ModuleType) -> None:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0})
    rt.cudaGetDeviceProperties = lambda i: (rt.cudaError_t.cudaSuccess,
                                            types.SimpleNamespace(name=GPU.encode() + b"\0\0", major=SM[0], minor=SM[1]))
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, mod in {"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}.items():
        monkeypatch.setitem(sys.modules, name, mod)


# ---- real artifacts from the calibration code -----------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(crop_classifier, mini_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("engine")
    spec = resolve_spec(crop_classifier)
    model = name_nodes(upgrade_opset(onnx.load(str(crop_classifier))))
    inputs, _ = calibration_batches(mini_root, spec, limit=4)
    ranges = collect_ranges(model, spec.input_name, inputs, "minmax")
    save_onnx_with_spec(model, spec, out / "fp32.onnx")
    save_onnx_with_spec(quantize_qdq(model, ranges, "minmax"), spec, out / "int8.onnx")
    write_cache(out / "int8.calib", ranges, "percentile", "8.5.2")
    return {"fp32": out / "fp32.onnx", "qdq": out / "int8.onnx", "cache": out / "int8.calib", "dir": out}


@pytest.mark.parametrize("precision,version,qdq,cache,dla,expect", [
    ("fp32", "8.5.2", False, False, None, ([], False, False)),
    ("fp16", "8.2.1", False, False, None, (["FP16"], False, False)),
    ("int8", "10.3.0", True, False, None, ([], True, False)),
    ("int8", "8.6.2", True, False, None, (["INT8", "FP16"], False, False)),
    ("int8", "8.5.2", False, True, None, (["INT8", "FP16"], False, True)),
    ("int8", "10.3.0", False, True, None, (["INT8", "FP16"], False, True)),
    ("int8", "10.3.0", True, False, 0, (["INT8", "FP16", "GPU_FALLBACK"], False, False)),
    ("fp16", "8.5.2", False, False, 1, (["FP16", "GPU_FALLBACK"], False, False)),
    ("int8", "8.5.2", True, False, None, (["INT8", "FP16"], False, False)),  # Q/DQ parses since TensorRT 8.0
    ("int8", "8.2.1", True, False, None, (["INT8", "FP16"], False, False)),
    ("int8", "11.0.0", False, True, None, "no implicit INT8"),
    ("int8", "8.5.2", False, False, None, "needs --calib-cache"),
    ("int8", "8.6.1", True, True, None, "carries its own scales"),
    ("fp16", "8.5.2", False, True, None, "goes with --precision int8"),
    ("fp32", "8.5.2", False, False, 0, "DLA runs FP16 or INT8"),
    ("fp16", "7.1.3", False, False, None, "older than 8.2"),
])
def test_option_mapping_and_version_refusal(precision, version, qdq, cache, dla, expect):
    opts = BuildOptions(Path("m.onnx"), precision, Path("m.trt"), Path("c.calib") if cache else None, dla_core=dla)
    if isinstance(expect, str):
        with pytest.raises(HagridEdgeError, match=expect.replace(".", r"\.")):
            plan_build(opts, version, qdq)
        return
    plan = plan_build(opts, version, qdq)
    assert (plan.flags, plan.strongly_typed, plan.calibration_cache) == expect


def test_qdq_build_is_strongly_typed_and_records_metadata(artifacts, monkeypatch):
    trt = fake_tensorrt("10.3.0.26")
    install(monkeypatch, trt)
    engine = artifacts["dir"] / "qdq.trt"
    info = build_engine(BuildOptions(artifacts["qdq"], "int8", engine, workspace_mib=256))
    net, config = trt.built["network"], trt.built["config"]
    # Q/DQ found in TensorRT's own parse, then parsed again into a strongly typed network
    assert [n.flags for n in trt.networks] == [0b01, 0b11] and net is trt.networks[-1]
    assert any(layer.type == trt.LayerType.QUANTIZE for layer in net.layers)
    assert config.flags == set() and config.int8_calibrator is None
    assert config.pool == {"WORKSPACE": 256 << 20}
    assert config.profiles[0].shapes["input"] == ((1, 3, 128, 128), (1, 3, 128, 128), (8, 3, 128, 128))
    assert engine.read_bytes() == b"ENGINE"
    spec = load_spec_file(sidecar_path(engine))
    rec = engine_info(spec, engine)
    assert rec == info
    assert (rec.tensorrt_version, rec.gpu, rec.compute_capability, rec.precision) == ("10.3.0.26", GPU, "8.7", "int8")
    assert rec.source_onnx_sha256 == sha256_file(artifacts["qdq"])
    assert spec.classes == resolve_spec(artifacts["qdq"]).classes
    check_compatible(rec, engine, "10.3.0.26", GPU, "8.7")
    with pytest.raises(HagridEdgeError, match="rebuild it here: python deploy/jetson/build_engine.py"):
        check_compatible(rec, engine, "10.4.0", GPU, "8.7")
    # the rebuild command the runtime prints is accepted by this script's parser as is
    args = parser().parse_args(shlex.split(rec.rebuild_command(engine))[2:])
    assert (args.onnx, args.precision, args.out) == (artifacts["qdq"], "int8", engine)


def test_qdq_on_tensorrt_8_is_explicit_int8_without_a_calibrator(artifacts, monkeypatch):
    """JetPack 5.1 (TensorRT 8.5): the QDQ ONNX builds with the INT8 flag and its own scales."""
    trt = fake_tensorrt("8.5.2.2")
    install(monkeypatch, trt)
    monkeypatch.setitem(sys.modules, "onnx", None)  # the builder reads Q/DQ from TensorRT's parse, not onnx
    info = build_engine(BuildOptions(artifacts["qdq"], "int8", artifacts["dir"] / "qdq85.trt"))
    config = trt.built["config"]
    assert [n.flags for n in trt.networks] == [0b01] and config.flags == {"INT8", "FP16"}
    assert config.int8_calibrator is None and trt.built["cache"] is None
    assert (info.tensorrt_version, info.precision, info.calibration_cache) == ("8.5.2.2", "int8", None)


def test_fp32_with_cache_uses_a_retagged_cache_calibrator(artifacts, monkeypatch):
    trt = fake_tensorrt("8.6.2.3")
    install(monkeypatch, trt)
    engine = artifacts["dir"] / "cache.trt"
    build_engine(BuildOptions(artifacts["fp32"], "int8", engine, calib_cache=artifacts["cache"]))
    config = trt.built["config"]
    assert config.flags == {"INT8", "FP16"} and trt.built["network"].flags == 0b01
    assert isinstance(config.int8_calibrator, trt.IInt8EntropyCalibrator2)
    assert config.int8_calibrator.get_batch(["input"]) is None
    served = parse_cache(trt.built["cache"].decode())
    written = parse_cache(artifacts["cache"].read_text())
    assert written.version_tag == 8502 and served.version_tag == 8602  # retagged for the TensorRT here
    assert served.scales == written.scales
    assert config.calibration_profile is config.profiles[0]
    assert engine_info(load_spec_file(sidecar_path(engine)), engine).calibration_cache == str(artifacts["cache"])


def test_old_tensorrt_workspace_dla_and_timing_cache(artifacts, monkeypatch):
    trt = fake_tensorrt("8.2.1.8")
    install(monkeypatch, trt)
    timing = artifacts["dir"] / "timing.cache"
    timing.write_bytes(b"seed")
    engine = artifacts["dir"] / "dla.trt"
    info = build_engine(BuildOptions(artifacts["fp32"], "fp16", engine, dla_core=1, timing_cache=timing,
                                     workspace_mib=64))
    config = trt.built["config"]
    assert config.max_workspace_size == 64 << 20
    assert (config.default_device_type, config.DLA_core) == (trt.DeviceType.DLA, 1)
    assert info.dla_core == 1 and engine_info(load_spec_file(sidecar_path(engine)), engine).dla_core == 1
    assert "--dla-core 1" in info.rebuild_command(engine)
    assert config.flags == {"FP16", "GPU_FALLBACK"}
    assert timing.read_bytes() == b"timing:seed"


def test_build_failures_are_one_line(artifacts, monkeypatch, capsys):
    install(monkeypatch, fake_tensorrt("8.6.1", fail_parse=True))
    with pytest.raises(HagridEdgeError, match="parser refused it.*Frobnicate"):
        build_engine(BuildOptions(artifacts["fp32"], "fp16", artifacts["dir"] / "x.trt"))
    install(monkeypatch, fake_tensorrt("8.6.1", fail_build=True))
    engine = artifacts["dir"] / "y.trt"
    assert main(["--onnx", str(artifacts["fp32"]), "--precision", "fp16", "--out", str(engine)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not build a fp16 engine" in err[0]
    assert not engine.exists() and not sidecar_path(engine).exists()


def test_missing_tensorrt_is_one_line(artifacts, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on this machine: not installed
    assert main(["--onnx", str(artifacts["qdq"]), "--precision", "int8", "--out", str(artifacts["dir"] / "z.trt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT's Python bindings are not installed" in err[0]
