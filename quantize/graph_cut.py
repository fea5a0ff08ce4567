"""Cut box decoding and NMS out of a detector graph, leaving the compute part with raw per-prior outputs.

Quantizing a graph with NMS inside means quantizing variable-length tensors and the box decode, the
classic source of INT8 accuracy loss; the compute part alone quantizes cleanly, and decode + NMS run
on the host through ``hagrid_edge.processing`` (the one implementation every runtime uses).

The decode is not pattern-matched op by op: the subgraph from the raw regression tensor to the
decoded boxes is run on probe inputs, which yields the priors and box coder weights the graph
itself uses, and is then checked against ``processing.decode_ssd`` on random inputs. A graph whose
decode is not SSD-style fails that check with a clear error instead of being silently misread.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.processing import decode_ssd
from hagrid_edge.quantize.onnx_files import load_model
from hagrid_edge.spec import ModelSpec

REGRESSION, LOGITS = "bbox_regression", "cls_logits"
_ACTIVATIONS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}
_PROBE = 0.5  # regression offset used to measure the box coder weights
_DECODE_TOLERANCE = 1e-3  # in prior units; float32 decode differences are ~1e-6


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _ancestor_nodes(targets: Iterable[str], producers: dict[str, onnx.NodeProto],
                    stop: set[str] = frozenset()) -> list[onnx.NodeProto]:
    """Nodes the ``targets`` depend on (not crossing ``stop`` tensors), in graph order."""
    seen: dict[int, onnx.NodeProto] = {}
    todo = [t for t in targets if t not in stop]
    while todo:
        node = producers.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        todo += [i for i in node.input if i and i not in stop]
    return list(seen.values())


def _ancestor_tensors(target: str, producers: dict[str, onnx.NodeProto]) -> set[str]:
    return {i for n in _ancestor_nodes([target], producers) for i in n.input if i} | {target}


def _probe_shapes(model: onnx.ModelProto, spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Run the graph once on a random batch-1 input and record every tensor's shape."""
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    h, w = spec.input_size
    shape = (1, 3, h, w) if spec.layout == "NCHW" else (1, h, w, 3)
    x = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return {n: tuple(np.asarray(v).shape) for n, v in zip(names, sess.run(names, {spec.input_name: x}), strict=True)}


def _subgraph_model(model: onnx.ModelProto, source: str, target: str, source_shape: tuple[int, ...]
                    ) -> onnx.ModelProto:
    """A model computing ``target`` from ``source`` alone (constants included)."""
    producers = _producers(model)
    nodes = _ancestor_nodes([target], producers, stop={source})
    graph_inputs = {i.name for i in model.graph.input}
    inits = {t.name: t for t in model.graph.initializer}
    needed = {i for n in nodes for i in n.input if i} - {o for n in nodes for o in n.output} - {source}
    if needed & graph_inputs:
        raise HagridEdgeError(f"the box decode ({target}) reads graph inputs besides the regression tensor")
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    graph = helper.make_graph(
        nodes, "decode",
        [helper.make_tensor_value_info(source, onnx.TensorProto.FLOAT, list(source_shape))],
        [onnx.ValueInfoProto(name=target)],
        [inits[n] for n in sorted(needed) if n in inits])
    sub = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return sub


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0], dtype=np.float32)


def _to_cxcywh(boxes: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "cxcywh":
        return boxes
    x1, y1, x2, y2 = boxes.T
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)


def measure_decode(decode: np.ndarray, source: str, n: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """Priors (cx, cy, w, h in the graph's box units) and box coder weights of an SSD-style decode.

    ``decode`` is a model from the raw regression ``source`` [1, n, 4] to the decoded boxes.
    """
    def run(reg: np.ndarray) -> np.ndarray:
        return _run(decode, {source: reg[None].astype(np.float32)}).reshape(n, 4)

    zero = np.zeros((n, 4), np.float32)
    base = run(zero)
    probes = []
    for k in range(4):
        reg = zero.copy()
        reg[:, k] = _PROBE
        probes.append(run(reg))
    # The decoded format is the one in which a change of dw alters only the width.
    for fmt in ("xyxy", "cxcywh"):
        b0, bw = _to_cxcywh(base, fmt), _to_cxcywh(probes[2], fmt)
        if np.allclose(b0[:, [0, 1, 3]], bw[:, [0, 1, 3]], atol=1e-5) and not np.allclose(b0[:, 2], bw[:, 2]):
            break
    else:
        raise HagridEdgeError("the graph's box decode is not SSD-style (width offset moves the box centre)")
    priors = _to_cxcywh(base, fmt)
    moved = [_to_cxcywh(p, fmt) for p in probes]
    with np.errstate(divide="ignore", invalid="ignore"):
        wx = np.median(_PROBE * priors[:, 2] / (moved[0][:, 0] - priors[:, 0]))
        wy = np.median(_PROBE * priors[:, 3] / (moved[1][:, 1] - priors[:, 1]))
        ww = np.median(_PROBE / np.log(moved[2][:, 2] / priors[:, 2]))
        wh = np.median(_PROBE / np.log(moved[3][:, 3] / priors[:, 3]))
    weights = tuple(float(np.round(v, 4)) for v in (wx, wy, ww, wh))
    if not all(np.isfinite(weights)) or min(weights) <= 0:
        raise HagridEdgeError(f"the graph's box decode is not SSD-style (measured weights {weights})")
    reg = np.random.default_rng(1).uniform(-2, 2, (n, 4)).astype(np.float32)
    ours = decode_ssd(reg, priors, weights)
    theirs = run(reg)
    theirs = theirs if fmt == "xyxy" else np.concatenate([theirs[:, :2] - theirs[:, 2:] / 2,
                                                          theirs[:, :2] + theirs[:, 2:] / 2], axis=1)
    err = float(np.abs(ours - theirs).max() / max(float(np.abs(priors[:, 2:]).mean()), 1e-9))
    if err > _DECODE_TOLERANCE:
        raise HagridEdgeError(f"the graph's box decode differs from SSD decoding (relative error {err:.2g})")
    return priors.astype(np.float32), weights


def _scalar(constants: dict[str, np.ndarray], name: str, what: str) -> float:
    if name not in constants:
        raise HagridEdgeError(f"the NMS {what} ({name}) is not a constant")
    return round(float(np.asarray(constants[name]).reshape(-1)[0]), 6)


def _score_threshold(model: onnx.ModelProto, nms: onnx.NodeProto, act_out: str,
                     constants: dict[str, np.ndarray]) -> float:
    """The graph's score threshold: NMS input 4, else a Greater(OrEqual) on the scores before NMS."""
    if len(nms.input) > 4 and nms.input[4]:
        return _scalar(constants, nms.input[4], "score threshold")
    producers = _producers(model)
    before_nms = _ancestor_tensors(nms.input[1], producers) | _ancestor_tensors(nms.input[0], producers)
    for node in model.graph.node:
        if node.op_type in ("Greater", "GreaterOrEqual") and node.output[0] in before_nms:
            a, b = node.input
            if b in constants and act_out in _ancestor_tensors(a, producers):
                return _scalar(constants, b, "score threshold")
    return 0.0


def _prune(model: onnx.ModelProto, outputs: dict[str, str], shapes: dict[str, tuple[int, ...]]
           ) -> onnx.ModelProto:
    """Keep only what computes ``outputs`` (tensor -> new name), renamed, as the graph's outputs."""
    producers = _producers(model)
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    nodes = sorted(_ancestor_nodes(outputs, producers), key=lambda n: order[id(n)])
    nodes = [copy.deepcopy(n) for n in nodes]
    for node in nodes:
        for k, name in enumerate(node.output):
            node.output[k] = outputs.get(name, name)
        for k, name in enumerate(node.input):
            node.input[k] = outputs.get(name, name)
    used = {i for n in nodes for i in n.input}
    graph_input = next(i for i in model.graph.input)
    batch = graph_input.type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or (batch.dim_value if batch.dim_value else "batch")
    graph = helper.make_graph(
        nodes, model.graph.name or "detector",
        [i for i in model.graph.input if i.name in used],
        [helper.make_tensor_value_info(new, onnx.TensorProto.FLOAT, [batch_dim, *shapes[old][1:]])
         for old, new in outputs.items()],
        [t for t in model.graph.initializer if t.name in used])
    out = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version,
                            producer_name="hagrid-edge graph_cut")
    onnx.checker.check_model(out)
    return out


def _box_tensors(nms: onnx.NodeProto, act_out: str, producers: dict[str, onnx.NodeProto],
                 shapes: dict[str, tuple[int, ...]], n: int, name: str) -> tuple[list[str], list[str]]:
    """The raw box regression (upstream) and the decoded boxes (downstream): the tensors with one row
    per prior on NMS's box input that do not depend on the scores."""
    box_path = _ancestor_tensors(nms.input[0], producers)
    cands = [t for t in box_path if shapes.get(t) in ((1, n, 4), (n, 4))
             and act_out not in _ancestor_tensors(t, producers)]
    raw = [t for t in cands if not (set(cands) - {t}) & _ancestor_tensors(t, producers)]
    decoded = [t for t in cands if not any(t in _ancestor_tensors(o, producers) for o in cands if o != t)]
    if len(raw) != 1 or len(decoded) != 1 or raw == decoded or shapes[raw[0]] != (1, n, 4):
        raise HagridEdgeError(f"{name}: cannot tell the raw box regression from the decoded boxes "
                              f"(candidates {sorted(cands)})")
    return raw, decoded


def split_detector(model: str | Path | onnx.ModelProto, spec: ModelSpec) -> tuple[onnx.ModelProto, ModelSpec]:
    """The compute part of a detector with decode + NMS inside, and the spec to post-process it on the host.

    Returns a graph whose outputs are ``bbox_regression`` [B, N, 4] and ``cls_logits`` [B, N, C] and a
    spec with ``outputs="ssd_raw"``, the graph's priors, box coder weights, score activation and its
    NMS IoU / score thresholds, so ``processing.postprocess_detector`` reproduces the original outputs.
    """
    name = model if not isinstance(model, onnx.ModelProto) else "model"
    model = load_model(model)
    if spec.task != "detector" or spec.outputs != "nms":
        raise HagridEdgeError(f"{name}: only a detector with NMS in the graph can be split "
                              f"(spec: task {spec.task}, outputs {spec.outputs})")
    nms_nodes = [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    if len(nms_nodes) != 1:
        raise HagridEdgeError(f"{name}: expected one NonMaxSuppression node, found {len(nms_nodes)}")
    nms = nms_nodes[0]
    producers = _producers(model)
    constants = _constants(model)
    acts = [n for n in _ancestor_nodes([nms.input[1]], producers) if n.op_type in _ACTIVATIONS]
    if len(acts) != 1:
        raise HagridEdgeError(f"{name}: cannot find the score activation (Softmax/Sigmoid) before NMS")
    act = acts[0]
    logits, act_out = act.input[0], act.output[0]
    shapes = _probe_shapes(model, spec)
    if len(shapes.get(logits, ())) != 3:
        raise HagridEdgeError(f"{name}: class logits {logits} are not [batch, priors, classes]")
    _, n, n_cls = shapes[logits]
    raw, decoded = _box_tensors(nms, act_out, producers, shapes, n, name)
    decode = _subgraph_model(model, raw[0], decoded[0], shapes[raw[0]])
    priors, weights = measure_decode(decode, raw[0], n)
    box_units = spec.box_units
    if box_units == "normalized":
        h, w = spec.input_size
        priors = priors * np.array([w, h, w, h], np.float32)
        box_units = "pixels"
    background = n_cls == len(spec.classes) + 1
    if not background and n_cls != len(spec.classes):
        raise HagridEdgeError(f"{name}: {n_cls} class scores for {len(spec.classes)} spec classes")
    iou = _scalar(constants, nms.input[3], "IoU threshold") if len(nms.input) > 3 and nms.input[3] else 0.0
    if not 0.0 < iou <= 1.0:
        raise HagridEdgeError(f"{name}: the NMS IoU threshold {iou} is not in (0, 1]")
    score = _score_threshold(model, nms, act_out, constants)
    cut = _prune(model, {raw[0]: REGRESSION, logits: LOGITS}, shapes)
    raw_spec = ModelSpec.from_dict({
        **spec.to_dict(), "outputs": "ssd_raw", "output_names": {REGRESSION: REGRESSION, LOGITS: LOGITS},
        "output_quant": {}, "priors": priors, "box_units": box_units, "box_coder_weights": list(weights),
        "score_activation": _ACTIVATIONS[act.op_type], "background_class": background,
        "score_threshold": score, "iou_threshold": iou,
        "provenance": {**spec.provenance, "graph_cut": {
            "from_outputs": "nms", "removed_ops": sorted({n.op_type for n in model.graph.node} -
                                                         {n.op_type for n in cut.graph.node}),
            "raw_tensors": {REGRESSION: raw[0], LOGITS: logits}}},
    })
    return cut, raw_spec
