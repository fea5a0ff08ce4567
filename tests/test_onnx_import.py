"""The HaGRID authors' ONNX models as trainable torch modules: parity with ONNX Runtime on real photos,
new class heads that start from the old ones, training from an ONNX ``init:``, and refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from hagrid_edge.data.annotations import load_split
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import DETECTOR_CLASSES, GESTURES
from hagrid_edge.models import build_model, load_model, model_spec, onnx_model
from hagrid_edge.onnx_import import import_onnx
from hagrid_edge.processing import crop_inputs, preprocess
from hagrid_edge.quantize.graph_cut import split_detector
from hagrid_edge.spec import resolve_spec
from hagrid_edge.train.config import from_dict
from hagrid_edge.train.engine import Trainer


@pytest.fixture(scope="module")
def photos(mini_root):
    return load_split(mini_root, "val")[:6]


def test_detector_matches_onnx_runtime_on_real_photos(hand_detector, photos):
    net, spec = import_onnx(hand_detector, "detector")
    cut, _ = split_detector(hand_detector, resolve_spec(hand_detector))
    session = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([preprocess(read_rgb(s.image_path), spec)[0] for s in photos])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))  # noqa: B905
    with torch.no_grad():
        got = net.eval()(torch.from_numpy(x))
    assert sum(p.numel() for p in net.parameters()) == 273_888
    for role in ("bbox_regression", "cls_logits"):
        ref = want[spec.output_names[role]]
        assert got[role].shape == ref.shape
        np.testing.assert_allclose(got[role].numpy(), ref, atol=1e-4)


def test_classifier_matches_onnx_runtime_on_real_hand_crops(crop_classifier, photos):
    net, spec = import_onnx(crop_classifier, "classifier")
    frames = [read_rgb(s.image_path) for s in photos]
    x = np.concatenate([crop_inputs(f, s.boxes_xyxy(f.shape[1], f.shape[0]), spec) for f, s in zip(frames, photos)])  # noqa: B905
    session = ort.InferenceSession(str(crop_classifier), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"input": x})[0]
    with torch.no_grad():
        got = net.eval()(torch.from_numpy(x))["logits"].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_new_gesture_heads_start_as_the_hand_detector(hand_detector, photos):
    """Each gesture logit starts as the old hand logit less log(19): background probability unchanged,
    and the gestures' probabilities sum to the old hand probability."""
    hands, hand_cfg, _ = onnx_model("onnx_ssd", hand_detector, ["hand"])
    gestures, cfg, report = onnx_model("onnx_ssd", hand_detector, list(DETECTOR_CLASSES))
    assert len(report.missing) == 8 and all("classification_headers" in k for k in report.missing)
    assert cfg.priors is not None and len(cfg.priors) == 4420 and cfg.resize == "stretch"
    x = torch.from_numpy(preprocess(read_rgb(photos[0].image_path), model_spec(cfg, gestures))[0])
    with torch.no_grad():
        old = torch.softmax(hands.eval()(x)["cls_logits"], -1)
        new = torch.softmax(gestures.eval()(x)["cls_logits"], -1)
        same_boxes = torch.equal(hands(x)["bbox_regression"], gestures(x)["bbox_regression"])
    assert new.shape[-1] == len(DETECTOR_CLASSES) + 1 and same_boxes
    assert torch.allclose(new[..., 0], old[..., 0], atol=0.02)
    assert torch.allclose(new[..., 1:].sum(-1), old[..., 1], atol=0.02)


def test_classifier_keeps_the_rows_of_the_gestures_it_had(crop_classifier):
    net, spec = import_onnx(crop_classifier, "classifier")
    model, cfg, _ = onnx_model("onnx_classifier", crop_classifier, list(DETECTOR_CLASSES), crop="box")
    old = net.state_dict()
    new = model.state_dict()
    key = next(k for k in new if k.endswith("Gemm.weight"))
    for i, c in enumerate(DETECTOR_CLASSES[:-1]):
        assert torch.equal(new[key][i], old[key][list(spec.classes).index(c)])
    assert cfg.crop == {"kind": "box", "expand": 1.0} and cfg.resize == "letterbox"
    assert model_spec(cfg, model).output_names == {"logits": "logits"}


def test_a_checkpointed_plan_rebuilds_the_model_without_the_onnx_file(hand_detector):
    model, cfg, _ = onnx_model("onnx_ssd", hand_detector, list(GESTURES))
    again = build_model(type(cfg)(**{**cfg.__dict__}))
    again.load_state_dict(model.state_dict())
    x = torch.zeros(1, 3, 240, 320)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["cls_logits"], again.eval()(x)["cls_logits"])
    np.testing.assert_allclose(again.priors(), np.asarray(cfg.priors, np.float32), atol=1e-4)


def test_unsupported_ops_are_named(tmp_path):
    x = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Sigmoid", ["input"], ["logits"], name="odd")], "g", [x], [y])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph), path)
    from hagrid_edge.onnx_import import OnnxNet

    with pytest.raises(HagridEdgeError, match=r"node odd \(Sigmoid\): op not supported"):
        OnnxNet.from_onnx(onnx.load(path), {"logits": "logits"}, str(path))


def _onnx_config(mini_root, init, out, **extra):
    return {"out_dir": str(out), "model": {"name": "onnx_ssd", "mode": "gestures", "init": str(init)},
            "data": {"root": str(mini_root), "targets": ["call", "palm"], "workers": 0, "limit": 4, "val_limit": 2},
            "augment": {"crop": 0.0},
            "train": {"epochs": 1, "batch_size": 2, "lr": 0.001, "optimizer": "adamw", "warmup_epochs": 0.5,
                      **extra}}


def test_training_from_an_onnx_init_then_resuming(mini_root, hand_detector, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(from_dict(_onnx_config(mini_root, hand_detector, out)), progress=False)
    assert trainer.init_report is not None and len(trainer.init_report.loaded) == 96
    trainer.fit()
    model, spec, payload = load_model(out / "last.pt")
    assert payload["epoch"] == 1 and spec.resize == "stretch" and spec.input_size == (240, 320)
    assert spec.classes == list(DETECTOR_CLASSES) and payload["history"][0]["gestures/mAP50"] > 0
    resumed = Trainer(from_dict(_onnx_config(mini_root, hand_detector, out, epochs=2)), resume=True, progress=False)
    assert resumed.start_epoch == 1
    assert [r["epoch"] for r in resumed.fit()["history"]] == [1, 2]


def test_an_init_that_does_not_fit_says_so(mini_root, hand_detector, crop_classifier, tmp_path):
    with pytest.raises(HagridEdgeError, match="a classifier, not a detector"):
        from_dict(_onnx_config(mini_root, crop_classifier, tmp_path))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(HagridEdgeError, match="bad.onnx: not a readable ONNX model"):
        from_dict(_onnx_config(mini_root, bad, tmp_path))
    cfg = _onnx_config(mini_root, hand_detector, tmp_path)
    cfg["model"]["name"] = "ssdlite320_mobilenet_v3_small"
    with pytest.raises(HagridEdgeError, match="model.init: .* is ONNX: an ONNX file gives its layers"):
        from_dict(cfg)


def test_the_fresh_no_gesture_row_does_not_win_everywhere(crop_classifier, mini_root):
    """Before any training, the new 19-class classifier names the gestures the authors' one did."""
    from hagrid_edge.deploy.common.torch_backend import TorchBackend
    from hagrid_edge.evaluate import evaluate_classifier
    from hagrid_edge.pipeline import CropClassifier

    model, cfg, _ = onnx_model("onnx_classifier", crop_classifier, list(DETECTOR_CLASSES))
    samples = [s for s in load_split(mini_root, "val") if "no_gesture" not in s.labels][:12]
    r = evaluate_classifier(CropClassifier(TorchBackend.from_model(model.eval(), model_spec(cfg, model))), samples,
                            progress=False)
    assert r["accuracy"] >= 75
