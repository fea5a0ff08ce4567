"""deploy/jetson and its test fakes against the real TensorRT Python bindings of every line we claim.

TensorRT itself cannot run here, but its Python bindings wheels are small and on PyPI. Each claimed line
(``trt_fakes.LINES``: JetPack 5.1's 8.5, JetPack 6.0's 8.6, JetPack 6.1/6.2's 10.3, the newest 10.x and
11.x) is checked against the nearest wheel: ``pip download --no-deps`` once into a cache folder
(``$XDG_CACHE_HOME/hagrid-edge/bindings``, else ``~/.cache/hagrid-edge/bindings``), pip being the only
network use. The names a wheel exports are the NUL-terminated strings of its ``tensorrt.so``'s
``.rodata`` (pybind11 registers every class, method, property and enum value by such a literal; the
linker may store a name as the tail of a longer one, so a name counts where it ends a string) plus the
top-level names of its ``__init__.py`` (``nptype``). That is name by name, not class by class: a name
one class has and another lacks passes. The method is checked on known facts first.

Then, per line: every name the fakes offer is one the real bindings export; the builder and the backend,
run on that line's fakes through every option its version allows, call no name the fakes lack (a fake
raises AttributeError naming the version); the cuda-python of that line's JetPack has the module layout
its fake has and every name it offers.
"""

from __future__ import annotations

import ast
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import missing
from trt_fakes import GPU, LINES, MAGIC, Line, fake_cudart, fake_tensorrt, install, public_surface

from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.deploy.jetson.build_engine import BuildOptions, build_engine
from hagrid_edge.deploy.jetson.engine_meta import EngineInfo, with_engine_info
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.spec import ModelSpec, save_sidecar

CACHE_ENV = "HAGRID_EDGE_BINDINGS_CACHE"
# The cuda-python each JetPack's pip resolves (trt_fakes.LINES), as wheels of that board.
CUDA_WHEELS = {"cuda-python==11.8.2": ("3.8", "manylinux2014_aarch64"),
               "cuda-bindings==12.9.0": ("3.10", "manylinux2014_aarch64")}
FACTS_WHEEL = ("tensorrt-cu12-bindings==10.13.3.9", "3.11", "manylinux_2_28_x86_64")


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hagrid-edge"
    return root / "bindings" if not env else root


@cache
def wheel(requirement: str, python: str, platform: str) -> Path:
    """The wheel of ``requirement`` for that Python and platform: from the cache, else pip download (once)."""
    folder = cache_dir() / re.sub(r"[^A-Za-z0-9.=_-]", "_", f"{requirement}-py{python}-{platform}")
    found = sorted(folder.glob("*.whl"))
    if found:
        return found[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                              "--python-version", python, "--platform", platform, "-d", tmp, requirement],
                             capture_output=True, text=True, timeout=600)
        got = sorted(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not got:
            missing(f"pip download {requirement} (Python {python}, {platform}) failed: {run.stderr.strip()[-300:]}")
        os.replace(tmp, folder)  # whole folder at once: a cut download never counts as cached
        Path(tmp).mkdir()  # for TemporaryDirectory's cleanup
    return sorted(folder.glob("*.whl"))[0]


def _rodata(binary: bytes) -> bytes:
    """The ``.rodata`` section of an ELF64 little-endian shared library."""
    shoff = struct.unpack_from("<Q", binary, 0x28)[0]
    entsize, count, names_at = struct.unpack_from("<HHH", binary, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", binary, shoff + i * entsize) for i in range(count)]
    names = binary[headers[names_at][4]:headers[names_at][4] + headers[names_at][5]]
    for h in headers:
        if names[h[0]:names.index(b"\0", h[0])] == b".rodata":
            return binary[h[4]:h[4] + h[5]]
    raise AssertionError("no .rodata section")


class Exported:
    """The names a TensorRT bindings wheel exports (see the module docstring for how they are read)."""

    def __init__(self, path: Path) -> None:
        with zipfile.ZipFile(path) as z:
            (so,) = [n for n in z.namelist() if re.fullmatch(r"tensorrt[^/]*/tensorrt[^/]*\.so", n)]
            self.rodata = _rodata(z.read(so))
            init = ast.parse(z.read(so.rsplit("/", 1)[0] + "/__init__.py"))
        self.python = {n.name for n in init.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        self.python |= {t.id for n in init.body if isinstance(n, ast.Assign) for t in n.targets
                        if isinstance(t, ast.Name)}
        self.version = re.search(r"-(\d+(?:\.\d+)+)", path.name).group(1)

    def __contains__(self, name: str) -> bool:
        return name in self.python or name.encode() + b"\0" in self.rodata


@cache
def exported(requirement: str, python: str, platform: str) -> Exported:
    return Exported(wheel(requirement, python, platform))


def exported_by(line: Line) -> Exported:
    return exported(line.wheel, line.wheel_python, line.wheel_platform)


# ---- the method, on known facts -----------------------------------------------------------------
def test_name_reading_on_known_facts() -> None:
    """INT8 calibrators are in 8.6 and 10.x and gone in 11 (with set_calibration_profile, BuilderFlag.FP16
    and NetworkDefinitionCreationFlag.EXPLICIT_BATCH: TensorRT 11's migration guide); the bindings API
    (get_binding_index) and max_workspace_size are 8.x only; INT64 is new in 10."""
    trt8 = exported_by(LINES[0])
    trt10 = exported(*FACTS_WHEEL)
    trt11 = exported_by(LINES[-1])
    assert (trt8.version, trt10.version, trt11.version) == ("8.6.1", "10.13.3.9", "11.4.0.106")
    for name in ("IInt8EntropyCalibrator2", "int8_calibrator", "set_calibration_profile", "FP16", "EXPLICIT_BATCH"):
        assert name in trt8 and name in trt10 and name not in trt11, name
    for name in ("get_binding_index", "max_workspace_size", "execute_async_v2"):
        assert name in trt8 and name not in trt10 and name not in trt11, name
    assert "INT64" not in trt8 and "INT64" in trt10 and "INT64" in trt11
    for name in ("execute_async_v3", "num_io_tensors", "set_input_shape", "nptype", "__version__", "ILayer", "type"):
        assert name in trt8 and name in trt10 and name in trt11, name
    assert "no_such_tensorrt_name" not in trt8 and "IInt8EntropyCalibrator3" not in trt10


# ---- per claimed line ---------------------------------------------------------------------------
@pytest.mark.parametrize("line", LINES, ids=lambda li: li.key)
def test_fakes_offer_only_what_the_real_bindings_export(line: Line) -> None:
    real = exported_by(line)
    offered = public_surface(fake_tensorrt(line.version))
    extra = sorted(f"{owner}.{name}" for owner, names in offered.items() for name in names if name not in real)
    assert not extra, (f"the fake TensorRT {line.version} ({line.platform}) offers names TensorRT {real.version}'s "
                       f"bindings lack: {', '.join(extra)}")


def _spec() -> ModelSpec:
    return ModelSpec(task="classifier", classes=["a", "b"], input_size=(8, 8), outputs="logits",
                     output_names={"logits": "logits"})


def _tiny_models(folder: Path) -> dict[str, Path]:
    """A two-class classifier (dynamic batch) in FP32 and with Q/DQ on its input, each with its spec."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), "w")
    out = {}
    for kind in ("fp32", "qdq"):
        nodes, conv_in, inits = [], "input", [weight]
        if kind == "qdq":
            inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                      numpy_helper.from_array(np.array(0, np.int8), "z")]
            nodes += [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                      helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
            conv_in = "dq"
        nodes += [helper.make_node("Conv", [conv_in, "w"], ["c"]), helper.make_node("Flatten", ["c"], ["logits"])]
        graph = helper.make_graph(
            nodes, kind, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 3, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 2])], inits)
        path = folder / f"{kind}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        save_sidecar(_spec(), path)
        out[kind] = path
    (folder / "m.calib").write_text("TRT-8502-EntropyCalibration2\ninput: 3c010a14\n")
    return out


BUILDS = {  # name: (source, BuildOptions keywords)
    "fp32": ("fp32", {"precision": "fp32"}),
    "fp16": ("fp32", {"precision": "fp16"}),
    "int8 from QDQ": ("qdq", {"precision": "int8"}),
    "int8 from a calibration cache": ("fp32", {"precision": "int8", "calib_cache": "m.calib"}),
    "fp16 on DLA core 0": ("fp32", {"precision": "fp16", "dla_core": 0}),
    "int8 from QDQ on DLA core 0": ("qdq", {"precision": "int8", "dla_core": 0}),
    "fp32 with a timing cache": ("fp32", {"precision": "fp32", "timing_cache": "timing.cache"}),
}


def _run_paths(line: Line, folder: Path, monkeypatch: pytest.MonkeyPatch
               ) -> tuple[dict[str, list[str]], list[str], set[str]]:
    """Build every engine kind with ``line``'s fakes, then load and run one: ({name the fake lacks: the
    paths that called it}, kinds the version refuses, public names of the calibrators the builder defined)."""
    models = _tiny_models(folder)
    calls: dict[str, list[str]] = {}
    refused, calibrators = [], set()
    for name, (source, options) in BUILDS.items():
        fakes = install(monkeypatch, line.version)
        opts = {k: folder / v if k in ("calib_cache", "timing_cache") else v for k, v in options.items()}
        try:
            build_engine(BuildOptions(models[source], out=folder / "e.trt", **opts))
        except HagridEdgeError as e:  # the builder's own refusal of what this version cannot build
            refused.append(f"{name}: {e}")
        except AttributeError as e:
            calls.setdefault(str(e), []).append(f"build {name}")
        calibrator = getattr(fakes.trt._built.get("config"), "int8_calibrator", None)
        if calibrator is not None:
            calibrators |= {n for n in vars(type(calibrator)) if not n.startswith("_")}
    for dla in (None, 1):
        install(monkeypatch, line.version)
        engine = folder / f"run{dla}.engine"
        engine.write_bytes(MAGIC + models["fp32"].read_bytes())
        info = EngineInfo(tensorrt_version=line.version, gpu=GPU, compute_capability="8.7", precision="fp16",
                          source_onnx=str(models["fp32"]), source_onnx_sha256="0" * 64, dla_core=dla)
        save_sidecar(with_engine_info(_spec(), info), engine)
        try:
            backend = open_backend(engine)
            assert backend.infer(np.zeros((3, 3, 8, 8), np.float32))["logits"].shape == (3, 2)
        except AttributeError as e:
            calls.setdefault(str(e), []).append("run" + (f" on DLA core {dla}" if dla is not None else ""))
    return calls, refused, calibrators


@pytest.mark.parametrize("line", LINES, ids=lambda li: li.key)
def test_builder_and_backend_call_only_what_the_version_has(line: Line, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = exported_by(line)
    calls, refused, calibrators = _run_paths(line, tmp_path, monkeypatch)
    assert not calls, (f"deploy/jetson calls what TensorRT {line.version} ({line.platform}) lacks: "
                       + "; ".join(f"{name} ({', '.join(paths)})" for name, paths in sorted(calls.items())))
    unknown = sorted(n for n in calibrators if n not in real)
    assert not unknown, f"the cache calibrator defines {unknown}, which TensorRT {real.version}'s calibrators lack"
    # what each version refuses to build, and nothing else
    expected = {(8, 5): 0, (8, 6): 0, (10, 3): 0, (10, 16): 0, (11, 4): 3}[line.major_minor]
    assert len(refused) == expected, refused
    if expected:
        assert all(r.startswith(("fp16", "int8 from a calibration cache")) for r in refused), refused


@pytest.mark.parametrize("requirement", sorted(CUDA_WHEELS))
def test_cuda_python_layout_of_each_jetpack(requirement: str) -> None:
    """The cuda-python module a line's fake stands for exists in that JetPack's cuda-python, with every name
    the fake offers (``cudaMemcpyAsync``, ``cudaError_t.cudaSuccess``, ``cudaDeviceProp.major``, ...)."""
    python, platform = CUDA_WHEELS[requirement]
    with zipfile.ZipFile(wheel(requirement, python, platform)) as z:
        files = set(z.namelist())
        lines = [li for li in LINES if li.cuda_python == requirement]
        assert lines, requirement
        for module in {li.cuda_module for li in lines}:
            source = module.replace(".", "/") + ".pyx"
            assert source in files and any(f.startswith(module.replace(".", "/") + ".") and f.endswith(".so")
                                           for f in files), (requirement, module)
            words = set(re.findall(r"[A-Za-z_]\w*", z.read(source).decode()))
            offered = public_surface(fake_cudart(module))
            extra = sorted(f"{owner}.{n}" for owner, names in offered.items() for n in names if n not in words)
            assert not extra, f"the fake {module} offers names {requirement}'s {source} lacks: {extra}"
        if requirement.startswith("cuda-python==11"):  # JetPack 5's: the old layout only
            assert not any(f.startswith("cuda/bindings/") for f in files)
