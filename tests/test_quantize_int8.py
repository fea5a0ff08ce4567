"""INT8 QDQ ONNX: opset upgrade, Q/DQ placement, symmetric per-channel, one calibration pass for every target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hagrid_edge.data.annotations import load_split
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.quantize import range_choice
from hagrid_edge.quantize.calib_data import calibration_batches
from hagrid_edge.quantize.candidates import Candidate, OnnxCandidates
from hagrid_edge.quantize.choices import MSE_PERCENTILES
from hagrid_edge.quantize.graph_cut import split_detector
from hagrid_edge.quantize.onnx_int8 import (
    check_supported_ops,
    collect_ranges,
    float_layers,
    layer_units,
    name_nodes,
    opset_of,
    quantize_qdq,
    upgrade_opset,
)
from hagrid_edge.quantize.sensitivity import layer_sensitivity, outputs, relative_error
from hagrid_edge.quantize.trt_cache import scales_from_ranges
from hagrid_edge.spec import resolve_spec


@pytest.fixture(scope="module")
def classifier(crop_classifier, mini_root):
    spec = resolve_spec(crop_classifier)
    model = name_nodes(upgrade_opset(onnx.load(str(crop_classifier))))
    inputs, _ = calibration_batches(mini_root, spec, limit=12)
    return model, spec, inputs, collect_ranges(model, spec.input_name, inputs, "minmax")


def _init(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_qdq_placement_is_symmetric_and_per_channel(classifier):
    model, _, _, ranges = classifier
    q = quantize_qdq(model, ranges, "minmax")
    inits = _init(q)
    producers = {o: n for n in q.graph.node for o in n.output}
    compute = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(compute) == 4
    for node in compute:
        data, weight = (producers[i] for i in node.input[:2])
        assert data.op_type == weight.op_type == "DequantizeLinear", node.name
        w_scale = inits[weight.input[1]]
        out_channels = inits[weight.input[0]].shape[0 if node.op_type == "Conv" else 1]
        if node.op_type == "Conv":
            assert w_scale.shape == (out_channels,)  # per channel
    for dq in (n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        zp = inits[dq.input[2]]
        assert zp.dtype in (np.int8, np.int32) and not zp.any()  # symmetric (int32: biases), as TensorRT expects
    # ops outside the compute set stay float: no Q/DQ right before AveragePool / Flatten
    for node in q.graph.node:
        if node.op_type in ("AveragePool", "Flatten"):
            assert producers[node.input[0]].op_type != "DequantizeLinear"
    assert [o.name for o in q.graph.output] == [o.name for o in model.graph.output]
    assert producers["labels"].op_type == "Gemm"  # the head's logits leave the graph unrounded


def test_excluded_layers_stay_float(classifier):
    model, _, _, ranges = classifier
    units = layer_units(model)
    first = next(iter(units))
    q = quantize_qdq(model, ranges, "minmax", exclude=units[first])
    assert float_layers(q) == [first]
    assert not float_layers(quantize_qdq(model, ranges, "minmax"))


def test_cache_and_qdq_share_one_calibration(classifier):
    """The TensorRT cache scale of a tensor is the QDQ model's activation scale for it (a Conv output
    feeding a Relu takes the Relu's scale in both, as Conv+Relu run fused)."""
    model, _, _, ranges = classifier
    q = quantize_qdq(model, ranges, "minmax")
    inits, cache = _init(q), scales_from_ranges(ranges)
    into_relu = {i for n in model.graph.node if n.op_type == "Relu" for i in n.input}
    checked = 0
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in cache and node.input[0] not in into_relu:
            assert float(inits[node.input[1]]) == pytest.approx(cache[node.input[0]], rel=1e-5)
            checked += 1
    assert checked >= 4


def test_sensitivity_ranks_every_compute_layer(classifier, crop_classifier, mini_root, tmp_path):
    model, spec, _, ranges = classifier
    cands = OnnxCandidates(model, spec, ranges, "minmax", tmp_path)
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(model, str(fp32))
    photos = load_split(mini_root, "subsample")[:4]
    ranking = layer_sensitivity(cands, Candidate(fp32, spec, []), photos)
    assert sorted(n for n, _ in ranking) == sorted(layer_units(model)) and len(ranking) == 4
    assert all(e > 0 for _, e in ranking)  # every layer's INT8 moves the logits of real hand crops
    assert [e for _, e in ranking] == sorted((e for _, e in ranking), reverse=True)
    # keeping the three most sensitive layers in float brings the outputs closer to FP32 than full INT8
    ref = outputs(Candidate(fp32, spec, []), photos)
    mixed = cands.build(float_layers=[n for n, _ in ranking[:3]])
    assert float_layers(onnx.load(str(mixed.path))) == sorted(mixed.float_layers, key=list(layer_units(model)).index)
    assert relative_error(ref, outputs(mixed, photos)) < relative_error(ref, outputs(cands.build(), photos))


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_methods_take_a_ragged_last_batch(classifier, method):
    model, spec, inputs, _ = classifier
    ranges = collect_ranges(model, spec.input_name, (inputs * 2)[:13], method)  # batches of 8 and 5
    assert all(np.all(np.isfinite(d.range_value)) for d in ranges.data.values())


def test_a_finer_percentile_clips_less_than_percentile_and_no_more_than_minmax(classifier):
    """``p99.9999`` keeps a tenth of the values ``percentile`` (99.999) clips: every tensor's range lies
    between the two others', and the TensorRT cache takes it as it takes ``percentile``."""
    model, spec, inputs, _ = classifier
    ranges = {m: collect_ranges(model, spec.input_name, inputs, m).data for m in ("percentile", "p99.9999", "minmax")}
    assert set(ranges["p99.9999"]) == set(ranges["percentile"])
    wider = 0
    for name in ranges["p99.9999"]:
        fine, coarse, full = (float(np.max(np.abs(r[name].range_value))) for r in
                              (ranges["p99.9999"], ranges["percentile"], ranges["minmax"]))
        assert coarse <= fine <= full * (1 + 1e-6), name
        wider += fine > coarse
    assert wider > 0
    assert scales_from_ranges(collect_ranges(model, spec.input_name, inputs, "p99.9999"))


def test_detector_is_upgraded_and_calibrated_without_nms(hand_detector, mini_root):
    model, spec = split_detector(hand_detector, resolve_spec(hand_detector))
    assert opset_of(model) == 11
    up = upgrade_opset(model)
    assert opset_of(up) == 13
    inputs, _ = calibration_batches(mini_root, spec, limit=4)
    ranges = collect_ranges(name_nodes(up), spec.input_name, inputs, "percentile")
    assert "bbox_regression" in ranges.data and "cls_logits" in ranges.data


def _tiny(opset: int, op: str = "Relu", domain: str = "") -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], domain=domain)], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports)


def test_unsupported_opset_and_op_are_named():
    with pytest.raises(HagridEdgeError, match="m.onnx: opset 6 is too old"):
        upgrade_opset(_tiny(6), "m.onnx")
    with pytest.raises(HagridEdgeError, match="m.onnx: unsupported graph for calibration.*Frobnicate"):
        check_supported_ops(_tiny(13, "Frobnicate", "com.example"), "m.onnx")
    with pytest.raises(HagridEdgeError, match="--method"):
        collect_ranges(_tiny(13), "x", [np.zeros((1, 4), np.float32)], "kl")


def _symmetric_int8_error(v: np.ndarray, t: float) -> float:
    """Squared error of ``v`` through symmetric int8 with range [-t, t] (-127..127), as TensorRT rounds it."""
    scale = t / 127.0
    return float(np.sum((v - np.clip(np.round(v / scale), -127, 127) * scale) ** 2))


def test_mse_ranges_are_symmetric_levels_with_the_least_error(classifier):
    """``--method mse`` on the QDQ path: every tensor's range is symmetric, no wider than its min / max, and the
    level it took errs no more on the tensor's real values than the others (5 % slack: the choice reads ONNX
    Runtime's histogram, not the values); the TensorRT cache takes it."""
    model, spec, inputs, minmax = classifier
    ranges = collect_ranges(model, spec.input_name, inputs, "mse")
    assert set(ranges.data) == set(minmax.data)
    session_outputs = [n for n in ranges.data if n != spec.input_name][:6]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in session_outputs)
    import onnxruntime as ort

    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    got = [session.run(None, {spec.input_name: x}) for x in inputs]
    for k, name in enumerate(session_outputs):
        v = np.concatenate([g[k].ravel() for g in got]).astype(np.float64)
        lo, hi = (float(x) for x in ranges[name].range_value)
        assert lo == -hi and 0 < hi <= float(np.max(np.abs(minmax[name].range_value))) * (1 + 1e-6), name
        hist, edges = ranges[name].hist, ranges[name].hist_edges
        options = [range_choice.from_abs_histogram(hist, edges, (p,)).high for p in MSE_PERCENTILES]
        assert any(hi == pytest.approx(t) for t in options), (name, hi, options)
        errors = [_symmetric_int8_error(v, t) for t in options if t > 0]
        assert _symmetric_int8_error(v, hi) <= min(errors) * 1.05, (name, hi, options, errors)
    assert scales_from_ranges(ranges)
