"""Export parity: ONNX Runtime vs PyTorch on real HaGRID frames, spec embedded and beside the file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from hagrid_edge.cli import main
from hagrid_edge.data.annotations import load_split
from hagrid_edge.data.datasets import DetectionDataset, collate, normalize
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.export import export_onnx
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import DETECTOR_CLASSES
from hagrid_edge.models import ModelConfig, build_model, model_spec
from hagrid_edge.pipeline import load_pipeline
from hagrid_edge.spec import ONNX_METADATA_KEY, resolve_spec, sidecar_path
from hagrid_edge.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mini_root):
    """A detector whose BatchNorm statistics come from real frames (so outputs have real magnitudes)."""
    torch.manual_seed(0)
    cfg = ModelConfig("ssdlite320_mobilenet_v3_small", list(DETECTOR_CLASSES))
    model = build_model(cfg)
    spec = model_spec(cfg, model)
    samples = load_split(mini_root, "train", ["call", "like", "peace"])[:6]
    images, _ = collate([DetectionDataset(samples, spec)[i] for i in range(6)])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(normalize(images, spec))
    path = tmp_path_factory.mktemp("export") / "det.pt"
    save_checkpoint(path, model_cfg=cfg, spec=spec, model_state=model.state_dict(), ema_state=None, epoch=1,
                    train_state={}, history=[], config={}, provenance={})
    return path


def test_export_matches_pytorch_on_real_images(checkpoint, tmp_path, mini_root):
    out = tmp_path / "det.onnx"
    report = export_onnx(checkpoint, out, data=mini_root, check_images=4)
    assert report["images"] == 4
    assert max(report["max_abs_diff"].values()) < 1e-3, report
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version >= 13
    assert any(p.key == ONNX_METADATA_KEY for p in proto.metadata_props)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 320, 320]
    spec = resolve_spec(out)
    assert sidecar_path(out).is_file() and spec.outputs == "ssd_raw" and spec.priors.shape == (3234, 4)
    assert spec.provenance["checkpoint"] == "det.pt"
    # The checkpoint and the ONNX give the same detections through the deployment pipeline.
    frame = read_rgb(load_split(mini_root, "val", ["ok"])[0].image_path)
    a = load_pipeline(checkpoint, score_threshold=0.0)(frame)
    b = load_pipeline(out, score_threshold=0.0)(frame)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_export_cli_and_bad_input(checkpoint, tmp_path, capsys, mini_root):
    out = tmp_path / "cli.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--data", str(mini_root),
                 "--check-images", "2", "--no-simplify"]) == 0
    assert "max abs diff" in capsys.readouterr().out and out.is_file()
    with pytest.raises(HagridEdgeError, match="below 13"):
        export_onnx(checkpoint, tmp_path / "x.onnx", opset=11)
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "y.onnx")]) == 1
    assert "none.pt: no such checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "y.onnx").exists()


def test_cut_writes_the_authors_detector_as_raw_heads_with_the_same_detections(tmp_path, capsys, mini_root,
                                                                                 hand_detector):
    out = tmp_path / "hand_detector_cut.onnx"
    assert main(["export", "--cut", str(hand_detector), "--out", str(out), "--data", str(mini_root),
                 "--check-images", "12"]) == 0
    printed = capsys.readouterr().out
    assert "on 12 real images: the same" in printed and "outputs ssd_raw, 4420 priors" in printed
    spec = resolve_spec(out)
    assert spec.outputs == "ssd_raw" and sidecar_path(out).is_file()
    assert not {n.op_type for n in onnx.load(str(out)).graph.node} & {"NonMaxSuppression", "TopK"}
    # At the evaluation threshold the cut graph keeps the low-score hands the authors' graph drops at 0.7.
    frame = read_rgb(load_split(mini_root, "val")[5].image_path)
    assert len(load_pipeline(out, score_threshold=0.05)(frame)) >= len(load_pipeline(hand_detector)(frame))


def test_cut_refuses_a_graph_that_is_already_raw_heads(tmp_path, capsys):
    out = tmp_path / "twice.onnx"
    assert main(["export", "--cut", "assets/models/gesture_detector.onnx", "--out", str(out)]) == 1
    assert "already raw heads (ssd_raw), nothing to cut" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", "--cut", str(tmp_path / "none.onnx"), "--out", str(out)]) == 1
    assert "none.onnx: no such file" in capsys.readouterr().err
