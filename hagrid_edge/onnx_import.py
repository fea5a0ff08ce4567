"""ONNX convolutional graphs as trainable torch modules (the HaGRID authors' released models).

The authors publish their hand detector and crop classifier as ONNX only. ``OnnxNet`` rebuilds such
a graph op by op as torch layers whose weights are the graph's initializers, so the models can be
fine-tuned (new class heads, same backbone and box heads) and exported again through the usual
path. The graph's layout is kept as a plan of plain data (op, tensors, attributes) that checkpoints
store beside the weights, so a fine-tuned model rebuilds without the original ONNX file.

Only the ops these models use are taken: Conv, Relu, Add, Concat, AveragePool, Flatten, Gemm and the
SSD head pattern (NCHW->NHWC transpose, reshape to [N, priors, k]). Anything else is refused with
the node's name. A detector is first cut to its raw heads (``quantize.graph_cut``), so the decode
and NMS ops never reach the importer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hagrid_edge.errors import HagridEdgeError

PLAN_VERSION = 1
_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Constant"}  # only where they compute a reshape target
SUPPORTED = ("Conv", "Relu", "Add", "Concat", "AveragePool", "Flatten", "Gemm", "Transpose", "Reshape")


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _key(name: str) -> str:
    """A module name for a node: torch forbids dots in ModuleDict keys."""
    return name.strip("/").replace("/", "_").replace(".", "_") or "node"


def read_plan(model: Any, roles: dict[str, str], source: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The plan of ``model`` (an onnx.ModelProto) and its weights by parameter name.

    ``roles`` maps what each output is (``bbox_regression``, ``cls_logits``, ``logits``) to the graph
    output holding it.
    """
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shapes = _reshape_shapes(model, source)
    data = _data_tensors(model, roles, source)
    nodes: list[dict[str, Any]] = []
    weights: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if not set(node.output) & data:
            continue  # shape arithmetic of a reshape target; the reshape reads its result from ``shapes``
        where = f"{source}: node {node.name or node.output[0]} ({node.op_type})"
        if node.op_type not in SUPPORTED:
            raise HagridEdgeError(f"{where}: op not supported by the ONNX importer (supported: {', '.join(SUPPORTED)})")
        a, entry = _attrs(node), {"op": node.op_type, "in": [node.input[0]], "out": node.output[0]}
        if node.op_type == "Conv":
            w = init[node.input[1]]
            entry.update(key=_key(node.name or node.output[0]), out_ch=int(w.shape[0]), in_ch=int(w.shape[1]) * int(a.get("group", 1)),
                         kernel=list(w.shape[2:]), stride=list(a.get("strides", [1, 1])),
                         pad=_symmetric(a.get("pads", [0, 0, 0, 0]), where), dilation=list(a.get("dilations", [1, 1])),
                         groups=int(a.get("group", 1)), bias=len(node.input) > 2)
            weights[entry["key"] + ".weight"] = w
            if entry["bias"]:
                weights[entry["key"] + ".bias"] = init[node.input[2]]
        elif node.op_type in ("Add", "Concat"):
            entry["in"] = list(node.input)
            entry["axis"] = int(a.get("axis", 1))
        elif node.op_type == "Transpose":
            if list(a.get("perm", [])) != [0, 2, 3, 1]:
                raise HagridEdgeError(f"{where}: only the NCHW->NHWC transpose of SSD heads is supported")
        elif node.op_type == "Reshape":
            target = shapes.get(node.output[0])
            if not target or len(target) != 3 or target[-1] <= 0:
                raise HagridEdgeError(f"{where}: only reshapes to [N, priors, k] of SSD heads are supported")
            entry["last"] = int(target[-1])
        elif node.op_type == "AveragePool":
            entry.update(kernel=list(a["kernel_shape"]), stride=list(a.get("strides", a["kernel_shape"])),
                         pad=_symmetric(a.get("pads", [0, 0, 0, 0]), where))
        elif node.op_type == "Flatten":
            if int(a.get("axis", 1)) != 1:
                raise HagridEdgeError(f"{where}: only Flatten(axis=1) is supported")
        elif node.op_type == "Gemm":
            w = init[node.input[1]]
            if a.get("transB", 0) != 1 or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise HagridEdgeError(f"{where}: only Gemm(transB=1, alpha=beta=1), a linear layer, is supported")
            entry.update(key=_key(node.name or node.output[0]), in_f=int(w.shape[1]), out_f=int(w.shape[0]))
            weights[entry["key"] + ".weight"] = w
            weights[entry["key"] + ".bias"] = init[node.input[2]]
        nodes.append(entry)
    plan = {"version": PLAN_VERSION, "input": model.graph.input[0].name, "outputs": dict(roles), "nodes": nodes}
    return plan, weights


def _reshape_shapes(model: Any, source: str) -> dict[str, list[int]]:
    """The output shape of every Reshape for one zero input, measured with ONNX Runtime: the targets
    are computed in the graph (Shape, Gather, Concat), which shape inference does not always fold."""
    import copy

    import onnxruntime as ort
    from onnx import helper

    m = copy.deepcopy(model)
    names = [n.output[0] for n in m.graph.node if n.op_type == "Reshape"]
    if not names:
        return {}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or min(dims[1:]) <= 0:
        raise HagridEdgeError(f"{source}: the input needs a fixed [N, C, H, W] shape, not {dims}")
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(names, {m.graph.input[0].name: np.zeros([1, *dims[1:]], np.float32)})
    return {n: list(v.shape) for n, v in zip(names, got)}  # noqa: B905 (one result per name)


def _data_tensors(model: Any, roles: dict[str, str], source: str) -> set[str]:
    """Tensors on the path from the input to the outputs (a reshape's target shape is not)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    missing = [t for t in roles.values() if t not in producers]
    if missing:
        raise HagridEdgeError(f"{source}: the graph has no output {missing[0]}")
    seen: set[str] = set()
    todo = list(roles.values())
    while todo:
        t = todo.pop()
        if t in seen or t not in producers:
            continue
        seen.add(t)
        node = producers[t]
        todo.extend(node.input[:1] if node.op_type == "Reshape" else
                    [i for i in node.input if i in producers])
    return seen


def _symmetric(pads: list[int], where: str) -> list[int]:
    half = len(pads) // 2
    if list(pads[:half]) != list(pads[half:]):
        raise HagridEdgeError(f"{where}: asymmetric padding {list(pads)} is not supported")
    return list(pads[:half])


class OnnxNet(nn.Module):
    """A torch module that runs a plan (see ``read_plan``); forward returns the outputs by role."""

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__()
        if plan.get("version") != PLAN_VERSION:
            raise HagridEdgeError(f"graph plan version {plan.get('version')!r} is not {PLAN_VERSION}")
        self.plan = plan
        # Quantization-aware training (``train.fake_quant.FakeQuantizer``): applied in training mode only.
        self.quantizer: Any = None
        self.layers = nn.ModuleDict()
        for n in plan["nodes"]:
            if n["op"] == "Conv":
                self.layers[n["key"]] = nn.Conv2d(n["in_ch"], n["out_ch"], n["kernel"], n["stride"], n["pad"],
                                                  n["dilation"], n["groups"], n["bias"])
            elif n["op"] == "Gemm":
                self.layers[n["key"]] = nn.Linear(n["in_f"], n["out_f"])

    @classmethod
    def from_onnx(cls, model: Any, roles: dict[str, str], source: str) -> OnnxNet:
        plan, weights = read_plan(model, roles, source)
        net = cls(plan)
        net.load_state_dict({f"layers.{k}": torch.from_numpy(np.array(v)) for k, v in weights.items()})
        return net

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        values = {self.plan["input"]: x}
        quantizer = self.quantizer if self.training else None
        for n in self.plan["nodes"]:
            args = [values[i] for i in n["in"]]
            out = self._run_node(n, args, quantizer)
            values[n["out"]] = out if quantizer is None else quantizer.activation(n["out"], out)
        return {role: values[name] for role, name in self.plan["outputs"].items()}

    def _run_node(self, n: dict[str, Any], args: list[Tensor], quantizer: Any = None) -> Tensor:
        op = n["op"]
        if op in ("Conv", "Gemm"):
            layer = self.layers[n["key"]]
            return layer(args[0]) if quantizer is None else quantizer.layer(layer, args[0])
        if op == "Relu":
            return F.relu(args[0])
        if op == "Add":
            return args[0] + args[1]
        if op == "Concat":
            return torch.cat(args, n["axis"])
        if op == "Transpose":
            return args[0].permute(0, 2, 3, 1)
        if op == "Reshape":
            return args[0].reshape(args[0].shape[0], -1, n["last"])
        if op == "AveragePool":
            return F.avg_pool2d(args[0], n["kernel"], n["stride"], n["pad"], count_include_pad=False)
        return torch.flatten(args[0], 1)  # Flatten

    # ---- new class heads ---------------------------------------------------------------------------
    def _feeding(self, role: str, op: str) -> list[dict[str, Any]]:
        """The ``op`` nodes whose output reaches output ``role`` through head reshapes and concats only."""
        by_out = {n["out"]: n for n in self.plan["nodes"]}
        found, todo = [], [self.plan["outputs"][role]]
        while todo:
            n = by_out.get(todo.pop())
            if n is None:
                continue
            if n["op"] == op:
                found.append(n)
            elif n["op"] in ("Concat", "Transpose", "Reshape"):
                todo.extend(n["in"])
        return found

    def replace_ssd_classes(self, num_classes: int) -> None:
        """Give an SSD ``cls_logits`` head ``num_classes`` logits per prior (index 0 the background).

        The new logits start from the old ones: the background keeps its weights, every foreground
        class starts as a copy of the old foreground (less log of their number, so the background
        probability is unchanged): the fine-tune begins from a detector that already finds hands.
        """
        convs = self._feeding("cls_logits", "Conv")
        reshapes = self._feeding("cls_logits", "Reshape")
        old = reshapes[0]["last"] if reshapes else 0
        if not convs or old != 2:
            raise HagridEdgeError("the model has no two-logit (background, hand) SSD cls_logits head to replace")
        for n in reshapes:
            n["last"] = num_classes
        for n in convs:
            conv: nn.Conv2d = self.layers[n["key"]]
            anchors = n["out_ch"] // old
            new = nn.Conv2d(conv.in_channels, anchors * num_classes, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, conv.groups, conv.bias is not None)
            w, b = conv.weight.detach().view(anchors, old, *conv.weight.shape[1:]), conv.bias.detach().view(anchors, old)
            with torch.no_grad():
                nw = new.weight.view(anchors, num_classes, *conv.weight.shape[1:])
                nb = new.bias.view(anchors, num_classes)
                nw[:, 0], nb[:, 0] = w[:, 0], b[:, 0]
                nw[:, 1:] = w[:, 1:2] + 0.01 * w[:, 1:2].std() * torch.randn_like(nw[:, 1:])
                nb[:, 1:] = b[:, 1:2] - math.log(num_classes - 1)
            self.layers[n["key"]] = new
            n["out_ch"] = anchors * num_classes

    def replace_linear_classes(self, role: str, old_classes: list[str], new_classes: list[str]) -> None:
        """Give the last linear layer before output ``role`` one row per ``new_classes``.

        Rows of classes the old layer had are kept. A new class starts as the mean of the old rows no
        new class took (for ``no_gesture``: the old classes that are none of our gestures), so its
        logit starts at the scale of the others instead of near zero, where it would win everywhere.
        """
        gemms = self._feeding(role, "Gemm")
        if len(gemms) != 1:
            raise HagridEdgeError(f"the model has no single linear layer producing {role!r}")
        n = gemms[0]
        old: nn.Linear = self.layers[n["key"]]
        new = nn.Linear(old.in_features, len(new_classes))
        rest = [i for i, c in enumerate(old_classes) if c not in new_classes] or list(range(len(old_classes)))
        with torch.no_grad():
            for i, c in enumerate(new_classes):
                j = [old_classes.index(c)] if c in old_classes else rest
                new.weight[i] = old.weight[j].mean(0)
                new.bias[i] = old.bias[j].mean(0)
        self.layers[n["key"]] = new
        n["out_f"] = len(new_classes)


def import_onnx(path: str | Path, task: str) -> tuple[OnnxNet, Any]:
    """``path`` (an ONNX detector or classifier) as an ``OnnxNet`` and the spec of its raw outputs.

    Detectors are cut to their raw heads first; the spec comes from the file (embedded, sidecar or
    the registry of known third-party models).
    """
    from hagrid_edge.quantize.graph_cut import split_detector
    from hagrid_edge.quantize.onnx_files import load_model
    from hagrid_edge.spec import resolve_spec

    spec = resolve_spec(path)
    if spec.task != task:
        raise HagridEdgeError(f"{path}: a {spec.task}, not a {task}")
    if task == "detector":
        graph, spec = split_detector(path, spec) if spec.outputs == "nms" else (load_model(path), spec)
        roles = {r: spec.output_names[r] for r in ("bbox_regression", "cls_logits")}
    else:
        graph, roles = load_model(path), {"logits": spec.output_names["logits"]}
    return OnnxNet.from_onnx(graph, roles, str(path)), spec
