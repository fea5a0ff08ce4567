"""Cutting decode + NMS out of the HaGRID authors' hand detector, checked against the original graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hagrid_edge.data.annotations import load_split
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.images import read_rgb
from hagrid_edge.pipeline import Detector
from hagrid_edge.quantize.graph_cut import measure_decode, split_detector
from hagrid_edge.quantize.onnx_files import save_onnx_with_spec
from hagrid_edge.spec import resolve_spec, sidecar_path


@pytest.fixture(scope="module")
def cut(hand_detector):
    spec = resolve_spec(hand_detector)
    return split_detector(hand_detector, spec)


def test_cut_graph_has_raw_outputs_only(cut):
    model, spec = cut
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"NonMaxSuppression", "NonZero", "Softmax", "Exp", "GatherND"}
    assert [o.name for o in model.graph.output] == ["bbox_regression", "cls_logits"]
    assert spec.outputs == "ssd_raw" and spec.priors.shape == (4420, 4)
    assert spec.box_coder_weights == (10.0, 10.0, 5.0, 5.0)
    assert (spec.score_activation, spec.background_class) == ("softmax", True)
    assert (spec.score_threshold, spec.iou_threshold) == (0.7, 0.3)  # the graph's own Greater and NMS constants
    assert spec.box_units == "pixels" and spec.priors[:, 0].max() <= 320 and spec.priors[:, 1].max() <= 240


def test_cut_graph_reproduces_original_detections(cut, hand_detector, mini_root, tmp_path):
    model, spec = cut
    path = save_onnx_with_spec(model, spec, tmp_path / "raw.onnx")
    original = Detector(open_backend(hand_detector))
    raw = Detector(open_backend(path))  # spec threshold: the graph's 0.7
    samples = load_split(mini_root, "val")[::12]
    total = 0
    for s in samples:
        frame = read_rgb(s.image_path)
        a, b = original(frame), raw(frame)
        assert len(a) == len(b), s.image_path
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.01)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        total += len(a)
    assert total > 5


def test_raw_outputs_batch(cut):
    import onnxruntime as ort

    model, _ = cut
    sess = ort.InferenceSession(model.SerializeToString())
    reg, logits = sess.run(None, {"input": np.zeros((3, 3, 240, 320), np.float32)})
    assert reg.shape == (3, 4420, 4) and logits.shape == (3, 4420, 2)


def _decode_graph(fmt: str, weights: tuple[float, float, float, float], priors: np.ndarray) -> onnx.ModelProto:
    """A decode in the other convention (cx, cy, w, h out; variances as multipliers)."""
    n = len(priors)
    c = {"pc": priors[:, :2][None], "pw": priors[:, 2:][None],
         "vc": np.array([1 / weights[0], 1 / weights[1]], np.float32), "vw": np.array([1 / weights[2], 1 / weights[3]], np.float32),
         "s0": np.array([0], np.int64), "s2": np.array([2], np.int64), "s4": np.array([4], np.int64),
         "ax": np.array([2], np.int64), "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("Slice", ["reg", "s0", "s2", "ax"], ["d_c"]),
             helper.make_node("Slice", ["reg", "s2", "s4", "ax"], ["d_w"]),
             helper.make_node("Mul", ["d_c", "vc"], ["t1"]), helper.make_node("Mul", ["t1", "pw"], ["t2"]),
             helper.make_node("Add", ["t2", "pc"], ["ctr"]),
             helper.make_node("Mul", ["d_w", "vw"], ["t3"]), helper.make_node("Exp", ["t3"], ["t4"]),
             helper.make_node("Mul", ["t4", "pw"], ["wh"])]
    if fmt == "cxcywh":
        nodes.append(helper.make_node("Concat", ["ctr", "wh"], ["boxes"], axis=2))
    else:
        nodes += [helper.make_node("Mul", ["wh", "half"], ["hw"]), helper.make_node("Sub", ["ctr", "hw"], ["lo"]),
                  helper.make_node("Add", ["ctr", "hw"], ["hi"]), helper.make_node("Concat", ["lo", "hi"], ["boxes"], axis=2)]
    graph = helper.make_graph(nodes, "decode", [helper.make_tensor_value_info("reg", TensorProto.FLOAT, [1, n, 4])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in c.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("fmt", ["cxcywh", "xyxy"])
def test_measure_decode_reads_either_box_convention(fmt):
    priors = np.array([[10, 20, 8, 16], [50, 40, 30, 20], [100, 90, 64, 64]], np.float32)
    got_priors, weights = measure_decode(_decode_graph(fmt, (8.0, 8.0, 4.0, 4.0), priors), "reg", 3)
    np.testing.assert_allclose(got_priors, priors, rtol=1e-5)
    assert weights == (8.0, 8.0, 4.0, 4.0)


def test_measure_decode_refuses_a_non_ssd_decode():
    n = 3
    graph = helper.make_graph([helper.make_node("Add", ["reg", "p"], ["boxes"])], "linear",
                              [helper.make_tensor_value_info("reg", TensorProto.FLOAT, [1, n, 4])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4])],
                              [numpy_helper.from_array(np.ones((1, n, 4), np.float32), "p")])
    with pytest.raises(HagridEdgeError, match="SSD"):
        measure_decode(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), "reg", n)


def test_split_refuses_a_graph_without_nms(cut):
    model, spec = cut
    with pytest.raises(HagridEdgeError, match="NMS in the graph"):
        split_detector(model, spec)


def test_save_writes_embedded_and_sidecar_spec_atomically(cut, tmp_path):
    model, spec = cut
    out = save_onnx_with_spec(model, spec, tmp_path / "m.onnx")
    assert sidecar_path(out).is_file()
    sidecar_path(out).unlink()
    assert resolve_spec(out).outputs == "ssd_raw"  # embedded copy
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(HagridEdgeError, match="does not load"):
        save_onnx_with_spec(broken, spec, tmp_path / "bad.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
