"""Quantization-aware fine-tuning: int8 fake quantization of the shipped one-stage detector on real photos."""

from __future__ import annotations

import pytest
import torch
from one_stage import one_stage_detector, photo_batch

from hagrid_edge.data.annotations import load_split
from hagrid_edge.paths import REPO_ROOT
from hagrid_edge.train.fake_quant import FakeQuantizer

ONE_STAGE = REPO_ROOT / "assets" / "models" / "gesture_detector.onnx"


@pytest.fixture(scope="module")
def detector():
    return one_stage_detector(ONE_STAGE)


@pytest.fixture(scope="module")
def batch(detector, mini_root):
    return photo_batch(load_split(mini_root, "val")[::40][:4], detector[1])


def test_weights_round_to_127_steps_per_output_channel():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3) * torch.linspace(0.01, 2.0, 8)[:, None, None, None]
    q = FakeQuantizer.weight(w)
    step = w.abs().flatten(1).amax(1) / 127
    for c in range(8):
        levels = torch.round(q[c] / step[c])
        assert torch.allclose(levels * step[c], q[c], atol=1e-6) and levels.abs().max() <= 127
    assert ((q - w).abs().flatten(1).amax(1) <= step / 2 + 1e-7).all()


def test_fused_units_are_rounded_once_after_their_relu(detector):
    net = detector[0].net
    quantizer = FakeQuantizer(net.plan)
    by_out = {n["out"]: n for n in net.plan["nodes"]}
    relu_inputs = {n["in"][0] for n in net.plan["nodes"] if n["op"] == "Relu"}
    convs = [n for n in net.plan["nodes"] if n["op"] == "Conv"]
    assert any(c["out"] in relu_inputs for c in convs)
    for c in convs:
        assert (c["out"] in quantizer.quantized) == (c["out"] not in relu_inputs)
    assert all(by_out[name]["op"] not in ("Transpose", "Reshape") for name in quantizer.quantized)


def test_training_sees_int8_rounding_and_evaluation_does_not(detector, batch):
    model = one_stage_detector(ONE_STAGE)[0]  # its own copy: the test sets its quantizer
    keys = list(model.state_dict())
    model.eval()
    with torch.no_grad():
        fp32 = model(batch)
    model.net.quantizer = FakeQuantizer(model.net.plan)
    with torch.no_grad():
        assert torch.equal(model(batch)["cls_logits"], fp32["cls_logits"])  # eval: FP32
    model.train()
    for m in model.modules():  # batch statistics off, so only the rounding differs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    out = model(batch)
    diff = (out["cls_logits"].detach() - fp32["cls_logits"]).abs()
    assert 0 < float(diff.mean()) < 0.1 * float(fp32["cls_logits"].abs().mean())
    out["cls_logits"].logsumexp(-1).sum().backward()
    first = model.net.layers[next(iter(model.net.layers))]
    assert first.weight.grad is not None and float(first.weight.grad.abs().sum()) > 0  # straight through
    assert list(model.state_dict()) == keys and len(model.net.quantizer.ranges) == len(model.net.quantizer.quantized)
