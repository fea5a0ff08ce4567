"""deploy/jetson/build_engine.py around the TensorRT build: option mapping, version refusal, the cache
calibrator, metadata. Only the hardware calls are faked (``tests/trt_fakes.py``): the ``tensorrt`` module,
whose builder records what it was asked to do and offers only what its version's real bindings export,
and the CUDA device query in the cuda-python layout of its JetPack."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import onnx
import pytest
from test_board_defaults import ORIN_NANO, board_files
from trt_fakes import GPU, install

from hagrid_edge.deploy.jetson.build_engine import BuildOptions, build_engine, main, parser, plan_build
from hagrid_edge.deploy.jetson.engine_meta import check_compatible, engine_info
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.quantize.calib_data import calibration_batches
from hagrid_edge.quantize.onnx_files import save_onnx_with_spec
from hagrid_edge.quantize.onnx_int8 import collect_ranges, name_nodes, quantize_qdq, upgrade_opset
from hagrid_edge.quantize.trt_cache import parse_cache, write_cache
from hagrid_edge.spec import load_spec_file, resolve_spec, sha256_file, sidecar_path

EXPLICIT_BATCH, STRONGLY_TYPED = 1 << 0, 1 << 1  # create_network's flag bits


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
    ("fp16", "8.6.2", False, False, None, (["FP16"], False, False)),
    ("int8", "10.3.0", True, False, None, ([], True, False)),
    ("int8", "8.6.2", True, False, None, (["INT8", "FP16"], False, False)),
    ("int8", "8.5.2", False, True, None, (["INT8", "FP16"], False, True)),
    ("int8", "10.3.0", False, True, None, (["INT8", "FP16"], False, True)),
    ("int8", "10.3.0", True, False, 0, (["INT8", "FP16", "GPU_FALLBACK"], False, False)),
    ("fp16", "8.5.2", False, False, 1, (["FP16", "GPU_FALLBACK"], False, False)),
    ("int8", "8.5.2", True, False, None, (["INT8", "FP16"], False, False)),  # Q/DQ parses since TensorRT 8.0
    ("fp32", "11.4.0", False, False, None, ([], True, False)),  # TensorRT 11: strongly typed, no precision flags
    ("int8", "11.4.0", True, False, None, ([], True, False)),
    ("int8", "11.4.0", True, False, 0, (["GPU_FALLBACK"], True, False)),
    ("fp16", "11.4.0", False, False, None, "has no FP16 builder flag"),
    ("int8", "11.0.0", False, True, None, "no implicit INT8"),
    ("int8", "8.5.2", False, False, None, "needs --calib-cache"),
    ("int8", "8.6.1", True, True, None, "carries its own scales"),
    ("fp16", "8.5.2", False, True, None, "goes with --precision int8"),
    ("fp32", "8.5.2", False, False, 0, "DLA runs FP16 or INT8"),
    ("fp16", "8.2.1", False, False, None, "older than 8.5"),  # JetPack 4.6: CUDA 10.2, no cuda-python
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
    trt = install(monkeypatch, "10.3.0.30").trt
    engine = artifacts["dir"] / "qdq.trt"
    info = build_engine(BuildOptions(artifacts["qdq"], "int8", engine, workspace_mib=256))
    net, config = trt._built["network"], trt._built["config"]
    # Q/DQ found in TensorRT's own parse, then parsed again into a strongly typed network (explicit batch is
    # the only kind from TensorRT 10 on: no flag for it)
    assert [n._flags for n in trt._networks] == [0, STRONGLY_TYPED] and net is trt._networks[-1]
    assert any(layer.type == trt.LayerType.QUANTIZE for layer in net._layers)
    assert config._flags == set() and config.int8_calibrator is None
    assert config._pool == {"WORKSPACE": 256 << 20}
    assert config._profiles[0]._shapes["input"] == ((1, 3, 128, 128), (1, 3, 128, 128), (8, 3, 128, 128))
    assert engine.read_bytes() == b"ENGINE"
    spec = load_spec_file(sidecar_path(engine))
    rec = engine_info(spec, engine)
    assert rec == info
    assert (rec.tensorrt_version, rec.gpu, rec.compute_capability, rec.precision) == ("10.3.0.30", GPU, "8.7", "int8")
    assert rec.source_onnx_sha256 == sha256_file(artifacts["qdq"])
    assert spec.classes == resolve_spec(artifacts["qdq"]).classes
    check_compatible(rec, engine, "10.3.0.30", GPU, "8.7")
    with pytest.raises(HagridEdgeError, match="rebuild it here: python deploy/jetson/build_engine.py"):
        check_compatible(rec, engine, "10.4.0", GPU, "8.7")
    # the rebuild command the runtime prints is accepted by this script's parser as is
    args = parser().parse_args(shlex.split(rec.rebuild_command(engine))[2:])
    assert (args.onnx, args.precision, args.out) == (artifacts["qdq"], "int8", engine)


def test_qdq_on_tensorrt_8_is_explicit_int8_without_a_calibrator(artifacts, monkeypatch):
    """JetPack 5.1 (TensorRT 8.5): the QDQ ONNX builds with the INT8 flag and its own scales."""
    trt = install(monkeypatch, "8.5.2.2").trt
    monkeypatch.setitem(sys.modules, "onnx", None)  # the builder reads Q/DQ from TensorRT's parse, not onnx
    info = build_engine(BuildOptions(artifacts["qdq"], "int8", artifacts["dir"] / "qdq85.trt"))
    config = trt._built["config"]
    assert [n._flags for n in trt._networks] == [EXPLICIT_BATCH] and config._flags == {"INT8", "FP16"}
    assert config.int8_calibrator is None and trt._built["cache"] is None
    assert (info.tensorrt_version, info.precision, info.calibration_cache) == ("8.5.2.2", "int8", None)


def test_tensorrt_11_builds_strongly_typed_networks_only(artifacts, monkeypatch):
    """TensorRT 11 has no EXPLICIT_BATCH flag, no precision flags, no calibrator: one strongly typed parse."""
    trt = install(monkeypatch, "11.4.0.106").trt
    build_engine(BuildOptions(artifacts["qdq"], "int8", artifacts["dir"] / "qdq11.trt"))
    assert [n._flags for n in trt._networks] == [0] and trt._built["config"]._flags == set()
    build_engine(BuildOptions(artifacts["fp32"], "fp32", artifacts["dir"] / "fp32_11.trt"))
    assert trt._built["config"]._flags == set()
    with pytest.raises(HagridEdgeError, match="has no FP16 builder flag"):
        build_engine(BuildOptions(artifacts["fp32"], "fp16", artifacts["dir"] / "fp16_11.trt"))


def test_fp32_with_cache_uses_a_retagged_cache_calibrator(artifacts, monkeypatch):
    trt = install(monkeypatch, "8.6.2.3").trt
    engine = artifacts["dir"] / "cache.trt"
    build_engine(BuildOptions(artifacts["fp32"], "int8", engine, calib_cache=artifacts["cache"]))
    config = trt._built["config"]
    assert config._flags == {"INT8", "FP16"} and trt._built["network"]._flags == EXPLICIT_BATCH
    assert isinstance(config.int8_calibrator, trt.IInt8EntropyCalibrator2)
    assert config.int8_calibrator.get_batch(["input"]) is None
    served = parse_cache(trt._built["cache"].decode())
    written = parse_cache(artifacts["cache"].read_text())
    assert written.version_tag == 8502 and served.version_tag == 8602  # retagged for the TensorRT here
    assert served.scales == written.scales
    assert config._calibration_profile is config._profiles[0]
    assert engine_info(load_spec_file(sidecar_path(engine)), engine).calibration_cache == str(artifacts["cache"])


def test_dla_workspace_and_timing_cache(artifacts, monkeypatch):
    """JetPack 5.1 on a Xavier / Orin: a DLA core with GPU fallback, the workspace pool, a timing cache."""
    trt = install(monkeypatch, "8.5.2.2").trt
    timing = artifacts["dir"] / "timing.cache"
    timing.write_bytes(b"seed")
    engine = artifacts["dir"] / "dla.trt"
    info = build_engine(BuildOptions(artifacts["fp32"], "fp16", engine, dla_core=1, timing_cache=timing,
                                     workspace_mib=64))
    config = trt._built["config"]
    assert config._pool == {"WORKSPACE": 64 << 20}
    assert (config.default_device_type, config.DLA_core) == (trt.DeviceType.DLA, 1)
    assert info.dla_core == 1 and engine_info(load_spec_file(sidecar_path(engine)), engine).dla_core == 1
    assert "--dla-core 1" in info.rebuild_command(engine)
    assert config._flags == {"FP16", "GPU_FALLBACK"}
    assert timing.read_bytes() == b"timing:seed"


def test_build_failures_are_one_line(artifacts, monkeypatch, capsys):
    install(monkeypatch, "8.6.1", fail_parse=True)
    with pytest.raises(HagridEdgeError, match="parser refused it.*Frobnicate"):
        build_engine(BuildOptions(artifacts["fp32"], "fp16", artifacts["dir"] / "x.trt"))
    install(monkeypatch, "8.6.1", fail_build=True)
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


# ---- hagrid-edge build: the per-user engine cache ----------------------------------------------------
def _build(capsys, *argv: str) -> str:
    from hagrid_edge.cli import main as cli

    assert cli(["build", *argv]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    return line


def test_build_caches_the_main_job_engine_reuses_it_and_rebuilds_when_stale(tmp_path, monkeypatch, capsys):
    """`hagrid-edge build` on a Jetson: the shipped gesture_detector.onnx as an FP16 engine in the user's cache,
    reused while its record matches, rebuilt for another TensorRT or --force; `run` then finds it."""
    from hagrid_edge.board import default_engine, detect_board
    from hagrid_edge.cli import build_parser
    from hagrid_edge.paths import DEFAULT_MODELS, resolve_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = tmp_path / "cache" / "hagrid-edge" / "engines" / "gesture_detector_fp16.trt"
    source = DEFAULT_MODELS / "gesture_detector.onnx"
    trt = install(monkeypatch, "10.3.0.30").trt
    assert _build(capsys) == f"{engine}: built (fp16 engine of gesture_detector.onnx; not built yet)"
    assert trt._built["config"]._flags == {"FP16"} and engine.read_bytes() == b"ENGINE"
    rec = engine_info(load_spec_file(sidecar_path(engine)), engine)
    assert (rec.tensorrt_version, rec.precision, rec.gpu) == ("10.3.0.30", "fp16", GPU)
    assert rec.source_onnx_sha256 == sha256_file(source)

    trt = install(monkeypatch, "10.3.0.30").trt  # the same TensorRT and GPU: nothing is built
    assert _build(capsys) == f"{engine}: up to date, reused (fp16 engine of gesture_detector.onnx)"
    assert trt._networks == [] and trt._built == {}

    install(monkeypatch, "8.6.2.3")  # a JetPack upgrade (here: another line) makes it stale
    assert _build(capsys).endswith("; TensorRT 10.3.0.30 -> 8.6.2.3)")
    assert engine_info(load_spec_file(sidecar_path(engine)), engine).tensorrt_version == "8.6.2.3"
    assert _build(capsys, "--force").endswith("built (fp16 engine of gesture_detector.onnx; --force)")

    # run without --engine on this Jetson opens it; by name it is found too
    jetson = detect_board(board_files(tmp_path / "root", ORIN_NANO), machine="aarch64")
    path, line = default_engine(jetson)
    assert path == str(engine) and "gesture_detector_fp16.trt with TensorRT" in line
    assert resolve_model("gesture_detector_fp16.trt") == str(engine)
    # an engine from another TensorRT is refused with the command that rebuilds it, which the CLI accepts
    with pytest.raises(HagridEdgeError, match="rebuild it here: hagrid-edge build --model gesture_detector.onnx "
                                              "--precision fp16$") as refused:
        check_compatible(engine_info(load_spec_file(sidecar_path(engine)), engine), engine, "10.3.0.30", GPU, "8.7")
    command = str(refused.value).rpartition("rebuild it here: ")[2]
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.model, args.precision) == (str(source), "fp16")


def test_build_makes_the_shipped_qdq_onnx_an_explicit_int8_engine(tmp_path, monkeypatch, capsys):
    """The one-stage detector's shipped QDQ ONNX, by name: INT8 from its own scales, no calibrator."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = tmp_path / "cache" / "hagrid-edge" / "engines" / "gesture_detector_int8_int8.trt"
    trt = install(monkeypatch, "8.6.2.3").trt
    line = _build(capsys, "--model", "gesture_detector_int8.onnx", "--precision", "int8")
    assert line == f"{engine}: built (int8 engine of gesture_detector_int8.onnx; not built yet)"
    assert trt._built["config"]._flags == {"INT8", "FP16"} and trt._built["config"].int8_calibrator is None
    rec = engine_info(load_spec_file(sidecar_path(engine)), engine)
    assert (rec.precision, rec.calibration_cache) == ("int8", None)


def test_a_failed_rebuild_leaves_no_engine_that_looks_current(tmp_path, monkeypatch, capsys):
    from hagrid_edge.cli import main as cli
    from hagrid_edge.deploy.jetson.engine_cache import cached_engine, stale_reason
    from hagrid_edge.paths import DEFAULT_MODELS

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    install(monkeypatch, "8.6.2.3")
    _build(capsys)
    engine = cached_engine("gesture_detector.onnx", "fp16")
    install(monkeypatch, "10.3.0.30", fail_build=True)
    assert cli(["build"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not build a fp16 engine" in err[0]
    assert not sidecar_path(engine).exists()  # its record went first: the old engine is not taken for current
    assert stale_reason(engine, DEFAULT_MODELS / "gesture_detector.onnx", "fp16", "8.6.2.3", GPU, "8.7") == \
        "not built yet"


def test_build_refuses_what_is_not_an_onnx(tmp_path, monkeypatch, capsys):
    from hagrid_edge.cli import main as cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    install(monkeypatch, "10.3.0.30")
    assert cli(["build", "--model", "gesture_detector_int8.tflite"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hagrid-edge build: error: --model ") and "not an ONNX file" in err and "\n" not in err
