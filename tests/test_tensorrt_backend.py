"""The TensorRT adapter, with fakes of only what this machine lacks: the ``tensorrt`` module and the
CUDA runtime calls (``tests/trt_fakes.py``: each fake offers what the real bindings of its version export,
paired with the cuda-python layout of its JetPack). The fake engine executes the real ONNX graph it wraps
(ONNX Runtime standing in for the GPU), so inputs, outputs, buffer sizes and copies go through the adapter
for real.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from test_run_cli import SEQUENCE, make_video, read_events
from trt_fakes import GPU, LINES, MAGIC, cuda_modules, fake_cudart, fake_tensorrt, install

from hagrid_edge.cli import main
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.deploy.jetson.engine_meta import EngineInfo, with_engine_info
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.pipeline import CropClassifier
from hagrid_edge.processing import crop_inputs
from hagrid_edge.spec import ModelSpec, resolve_spec, save_sidecar

VERSIONS = [line.version for line in LINES]  # every TensorRT line we claim, each with its JetPack's cuda-python


@pytest.fixture
def hardware(monkeypatch: pytest.MonkeyPatch):
    """A function that installs the fake TensorRT of a version (and the cuda-python of its line)."""
    def put(version: str = "10.3.0.30", batches: tuple[int, int] = (1, 8)):
        return install(monkeypatch, version, batches=batches)

    return put


def make_engine(onnx: Path, out: Path, trt_version: str = "10.3.0.30", gpu: str = GPU, sm: str = "8.7",
                dla_core: int | None = None) -> Path:
    """A ".engine" file (the fake's format) with the sidecar spec and engine record the builder writes."""
    out.write_bytes(MAGIC + onnx.read_bytes())
    info = EngineInfo(tensorrt_version=trt_version, gpu=gpu, compute_capability=sm, precision="fp16",
                      source_onnx=str(onnx), source_onnx_sha256="0" * 64, dla_core=dla_core)
    save_sidecar(with_engine_info(resolve_spec(onnx), info), out)
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_engine_outputs_match_onnx(version: str, hardware, crop_classifier: Path, mini_root: Path,
                                   tmp_path: Path) -> None:
    fakes = hardware(version)
    engine = make_engine(crop_classifier, tmp_path / "cls.engine", trt_version=version)
    backend = open_backend(engine)
    assert backend.name == "tensorrt-cuda" and backend.max_batch == 8
    assert backend.cuda.rt is fakes.cudart and backend.cuda.rt.__name__ == fakes.line.cuda_module
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
    (dict(trt_version="8.6.2.3"), "built with TensorRT 8.6.2.3, this is TensorRT 10.3.0.30"),
    (dict(gpu="Xavier", sm="7.2"), "built for Xavier (sm 7.2), this is Orin (sm 8.7)"),
])
def test_engine_from_elsewhere_refused_with_rebuild_command(built: dict, message: str, hardware,
                                                            crop_classifier: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    hardware("10.3.0.30")
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


@pytest.mark.parametrize("version", ["10.3.0.30", "8.5.2.2"])  # JetPack 6.1, 5.1: the two with a DLA
def test_dla_core_and_shapes_outside_the_profile(version: str, hardware, crop_classifier: Path,
                                                 tmp_path: Path) -> None:
    """The DLA core recorded at build time is the one the engine is loaded onto; a shape the engine's
    profile refuses (TensorRT's shape setter returns False) or a wrong input size is one clear error."""
    hardware(version)
    assert open_backend(make_engine(crop_classifier, tmp_path / "gpu.engine", trt_version=version)).engine._dla_core == -1
    backend = open_backend(make_engine(crop_classifier, tmp_path / "dla.engine", trt_version=version, dla_core=1))
    assert backend.engine._dla_core == 1
    x = np.zeros((1, *backend._in_dims), np.float32)
    with pytest.raises(HagridEdgeError, match=r"input of shape \(1, 3, 64, 64\), the engine takes \(N, 3, 128, 128\)"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))

    hardware(version, batches=(2, 8))  # an engine built with a smallest batch of 2
    backend = open_backend(make_engine(crop_classifier, tmp_path / "min2.engine", trt_version=version))
    assert len(backend.infer(np.repeat(x, 2, axis=0))["labels"]) == 2
    with pytest.raises(HagridEdgeError, match=r"refused input shape \(1, 3, 128, 128\) for 'input' \(outside the "
                                              r"engine's optimisation profile\)"):
        backend.infer(x)


def test_tensorrt_older_than_jetpack_5_1_is_refused(monkeypatch: pytest.MonkeyPatch, crop_classifier: Path,
                                                    tmp_path: Path) -> None:
    """TensorRT 8.2 (JetPack 4.6) comes with CUDA 10.2, for which there is no cuda-python: refused in one line."""
    rt = fake_cudart("cuda.cudart")
    for name, module in {"tensorrt": fake_tensorrt("8.2.1.8"), **cuda_modules("cuda.cudart", rt)}.items():
        monkeypatch.setitem(sys.modules, name, module)
    engine = make_engine(crop_classifier, tmp_path / "cls.engine", trt_version="8.2.1.8")
    with pytest.raises(HagridEdgeError, match=r"TensorRT 8\.2\.1\.8 is older than 8\.5 \(JetPack 5\.1\)"):
        open_backend(engine)
