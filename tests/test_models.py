"""Model builders, specs, and loading checkpoints in the HaGRID authors' layouts."""

from __future__ import annotations

import datetime
import os
import re

import numpy as np
import pytest
import torch

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.labels import DETECTOR_CLASSES, GESTURES
from hagrid_edge.models import (
    CHECKPOINT_FORMAT,
    TRUSTED_CHECKPOINTS_ENV,
    ModelConfig,
    SSDLite,
    TwoHeadClassifier,
    build_model,
    load_weights,
    model_config_of,
    model_spec,
    read_checkpoint,
    task_of,
)
from hagrid_edge.processing import decode_ssd


def test_detector_spec_priors_are_torchvision_anchors():
    cfg = ModelConfig("ssdlite320_mobilenet_v3_large", list(DETECTOR_CLASSES))
    model = build_model(cfg)
    spec = model_spec(cfg, model)
    assert spec.outputs == "ssd_raw" and spec.priors.shape == (3234, 4) and spec.background_class
    # Zero regression decodes to the anchors themselves (xyxy input pixels).
    boxes = decode_ssd(np.zeros((3234, 4), np.float32), spec.priors, spec.box_coder_weights)
    np.testing.assert_allclose(boxes, model.anchors.numpy(), atol=1e-3)
    out = model.eval()(torch.zeros(2, 3, 320, 320))
    assert out["bbox_regression"].shape == (2, 3234, 4) and out["cls_logits"].shape == (2, 3234, 20)


def test_unknown_model_and_wrong_input_size():
    with pytest.raises(HagridEdgeError, match="model.name: unknown model 'yolo'"):
        task_of("yolo")
    with pytest.raises(HagridEdgeError, match="model.input_size"):
        build_model(ModelConfig("ssdlite320_mobilenet_v3_small", ["hand"], input_size=(240, 320)))


def _authors_detector_state(model: SSDLite) -> dict:
    # Their second release: HaGRIDModel wrapper holding the torchvision SSD as ``hagrid_model``.
    return {"MODEL_STATE": {"hagrid_model." + k.removeprefix("ssd."): v.clone() for k, v in model.state_dict().items()},
            "EPOCHS_RUN": 10}


def _authors_mobilenet_state(model: TwoHeadClassifier) -> dict:
    # Their first release: backbone = Sequential(features, avgpool), gesture_classifier, leading_hand_classifier.
    renames = (("features.", "backbone.0."), ("gesture_head.", "gesture_classifier."),
               ("leading_hand_head.", "leading_hand_classifier."))
    state = {}
    for k, v in model.state_dict().items():
        for ours, theirs in renames:
            if k.startswith(ours):
                k = theirs + k[len(ours):]
        state[k] = v.clone()
    return {"state_dict": state, "epoch": 3}


def _authors_resnet_state(model: TwoHeadClassifier) -> dict:
    # ResNet: backbone = Sequential(conv1, bn1, relu, maxpool, layer1..4, avgpool), classifier.0, leading_hand.0.
    state = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"^features\.", "backbone.", k).replace("gesture_head.", "classifier.0.")
        state[k.replace("leading_hand_head.", "leading_hand.0.")] = v.clone()
    return {"state_dict": state}


@pytest.mark.parametrize("name,layout", [("ssdlite320_mobilenet_v3_large", _authors_detector_state),
                                         ("mobilenet_v3_small", _authors_mobilenet_state),
                                         ("resnet18", _authors_resnet_state)])
def test_authors_layout_loads_every_tensor(tmp_path, name, layout):
    classes = list(DETECTOR_CLASSES) if task_of(name) == "detector" else list(GESTURES)
    torch.manual_seed(1)
    source = build_model(ModelConfig(name, classes))
    path = tmp_path / "authors.pth"
    torch.save(layout(source), path)
    torch.manual_seed(2)
    target = build_model(ModelConfig(name, classes))
    report = load_weights(target, path, name)
    assert not report.missing and not report.unexpected and not report.mismatched
    for k, v in source.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k


def test_other_head_size_is_reported_not_fatal(tmp_path):
    gestures = build_model(ModelConfig("ssdlite320_mobilenet_v3_large", list(DETECTOR_CLASSES)))
    path = tmp_path / "authors.pth"
    torch.save(_authors_detector_state(gestures), path)
    hands = build_model(ModelConfig("ssdlite320_mobilenet_v3_large", ["hand"]))
    report = load_weights(hands, path, "ssdlite320_mobilenet_v3_large")
    assert report.mismatched and all("classification_head" in k for k in report.mismatched)
    assert "shape mismatch" in report.summary()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    resnet = build_model(ModelConfig("resnet18", list(GESTURES)))
    path = tmp_path / "resnet.pth"
    torch.save(_authors_resnet_state(resnet), path)
    detector = build_model(ModelConfig("ssdlite320_mobilenet_v3_small", ["hand"]))
    with pytest.raises(HagridEdgeError, match=r"resnet\.pth: not a ssdlite320_mobilenet_v3_small checkpoint"):
        load_weights(detector, path, "ssdlite320_mobilenet_v3_small")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HagridEdgeError, match="junk.pth: not a readable PyTorch checkpoint"):
        load_weights(detector, tmp_path / "junk.pth", "ssdlite320_mobilenet_v3_small")


def test_classifier_two_heads():
    model = build_model(ModelConfig("mobilenet_v3_small", list(GESTURES), (224, 224))).eval()
    out = model(torch.zeros(1, 3, 224, 224))
    assert out["logits"].shape == (1, 18) and out["leading_hand"].shape == (1, 2)


def test_checkpoint_with_objects_needs_trust(tmp_path, monkeypatch):
    """Only tensors and plain data are unpickled unless the user says the file is trusted."""
    path = tmp_path / "objects.pth"
    torch.save({"format": "x", "when": datetime.date(2026, 11, 30)}, path)
    with pytest.raises(HagridEdgeError, match=f"objects.pth: holds objects beyond .* {TRUSTED_CHECKPOINTS_ENV}=1"):
        read_checkpoint(path)
    monkeypatch.setenv(TRUSTED_CHECKPOINTS_ENV, "1")
    assert read_checkpoint(path)["when"] == datetime.date(2026, 11, 30)


class _RunsCode:
    def __reduce__(self):  # what a hostile checkpoint carries: a call made while unpickling
        return (os.system, ("touch hacked",))


def test_a_checkpoint_that_would_run_code_gets_the_trust_hint(tmp_path, monkeypatch):
    path = tmp_path / "hostile.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "x": _RunsCode()}, path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HagridEdgeError, match=f"hostile.pth: holds objects beyond .* {TRUSTED_CHECKPOINTS_ENV}=1"):
        read_checkpoint(path)
    assert not (tmp_path / "hacked").exists()


@pytest.mark.parametrize(("model", "message"), [
    (None, "has no 'model' entry"),
    ({"name": "mobilenet_v3_small", "input_size": [224, 224]}, "'model' entry lacks 'classes'"),
    ({"name": "x", "classes": ["a"], "input_size": 3, "mean": [0], "std": [1], "pad_value": 0}, "malformed"),
])
def test_a_checkpoint_without_its_model_entry_is_one_line(model, message):
    payload = {"format": CHECKPOINT_FORMAT} if model is None else {"format": CHECKPOINT_FORMAT, "model": model}
    with pytest.raises(HagridEdgeError, match=f"ckpt.pt: .*{message}"):
        model_config_of(payload, "ckpt.pt")
