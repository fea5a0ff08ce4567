"""Model builders by name, their specs, and checkpoint loading (ours and the HaGRID authors' layouts).

Detectors are torchvision SSDLite320 (MobileNetV3 large or small backbone) wrapped so that
``forward`` returns the raw head outputs (``bbox_regression``, ``cls_logits``): decoding and NMS
belong to ``hagrid_edge.processing``, identical for PyTorch, ONNX and every other runtime.
Classifiers are torchvision MobileNetV3 / ResNet backbones with two heads, gesture and leading hand,
as in the HaGRID authors' classifiers. No weights are downloaded: every builder starts from scratch
and ``init:`` in a training config points at a local checkpoint. ``onnx_ssd`` and ``onnx_classifier``
take their layers and weights from an ONNX file (``init:``), the form the HaGRID authors release
their models in (``hagrid_edge.onnx_import``), with new class heads for our classes.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection import ssdlite
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.labels import DETECTOR_CLASSES, GESTURES, HAND, LEADING_HANDS
from hagrid_edge.onnx_import import OnnxNet, import_onnx
from hagrid_edge.spec import ModelSpec

DETECTORS = ("ssdlite320_mobilenet_v3_large", "ssdlite320_mobilenet_v3_small")
MOBILENETS = ("mobilenet_v3_small", "mobilenet_v3_large")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d")
CLASSIFIERS = MOBILENETS + RESNETS
ONNX_MODELS = {"onnx_ssd": "detector", "onnx_classifier": "classifier"}  # layers and weights from model.init
MODEL_NAMES = DETECTORS + CLASSIFIERS + tuple(ONNX_MODELS)
DETECTOR_MODES = {"gestures": DETECTOR_CLASSES, "hands": (HAND,)}
CHECKPOINT_FORMAT = "hagrid_edge.checkpoint"
# Set to 1 to unpickle a trusted checkpoint fully (it may then run code); otherwise tensors and plain data only.
TRUSTED_CHECKPOINTS_ENV = "HAGRID_EDGE_TRUSTED_CHECKPOINTS"
# SSD box coder weights (torchvision's SSD); the spec carries them to the host decoder.
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def task_of(name: str) -> str:
    if name in DETECTORS:
        return "detector"
    if name in CLASSIFIERS:
        return "classifier"
    if name in ONNX_MODELS:
        return ONNX_MODELS[name]
    raise HagridEdgeError(f"model.name: unknown model {name!r} (known: {', '.join(MODEL_NAMES)})")


# ---- detector ----------------------------------------------------------------------------------
def _ssdlite_small(num_classes: int) -> SSD:
    """SSDLite320 on a MobileNetV3-small backbone, built the way torchvision builds the large one."""
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = torchvision.models.mobilenet_v3_small(weights=None, norm_layer=norm_layer, reduced_tail=True)
    ssdlite._normal_init(backbone)
    extractor = ssdlite._mobilenet_extractor(backbone, 6, norm_layer)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(extractor, (320, 320))
    head = ssdlite.SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes, norm_layer)
    return SSD(extractor, anchors, (320, 320), num_classes, head=head)


class RawSSD(nn.Module):
    """An SSD whose forward is the raw head; its anchors (xyxy input pixels) and torchvision's SSD loss."""

    neg_to_pos_ratio = 3  # hard negative mining, as torchvision's SSD

    def _set_anchors(self, anchors: Tensor) -> None:
        self.register_buffer("anchors", anchors, persistent=False)
        self.box_coder = det_utils.BoxCoder(weights=BOX_CODER_WEIGHTS)
        self.proposal_matcher = det_utils.SSDMatcher(0.5)

    def priors(self) -> np.ndarray:
        """Anchors as (cx, cy, w, h) in input pixels, the form the spec carries."""
        a = self.anchors.detach().cpu().numpy().astype(np.float32)
        return np.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2, a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]], 1)

    def loss(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """torchvision's SSD loss (hard negative mining 3:1) for boxes in input pixels, labels 1-based."""
        matched = []
        for t in targets:
            if t["boxes"].numel() == 0:
                matched.append(torch.full((len(self.anchors),), -1, dtype=torch.int64, device=self.anchors.device))
            else:
                matched.append(self.proposal_matcher(box_ops.box_iou(t["boxes"], self.anchors)))
        outputs = {k: v.float() for k, v in outputs.items()}
        # SSD.compute_loss reads only box_coder and neg_to_pos_ratio from its first argument
        return SSD.compute_loss(self, targets, outputs, [self.anchors] * len(targets), matched)


class SSDLite(RawSSD):
    """torchvision SSDLite320 whose forward is the raw head on a normalised, letterboxed batch."""

    def __init__(self, name: str, num_classes: int) -> None:
        super().__init__()
        if name == "ssdlite320_mobilenet_v3_large":
            self.ssd = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
                weights=None, weights_backbone=None, num_classes=num_classes + 1)
        else:
            self.ssd = _ssdlite_small(num_classes + 1)
        self.input_size = (320, 320)
        # Anchors depend only on the fixed input size: computed once, in xyxy input pixels.
        with torch.no_grad():
            was_training = self.ssd.training
            self.ssd.eval()
            features = list(self.ssd.backbone(torch.zeros(1, 3, *self.input_size)).values())
            self.ssd.train(was_training)
            images = ImageList(torch.zeros(1, 3, *self.input_size), [self.input_size])
            anchors = self.ssd.anchor_generator(images, features)[0]
        self._set_anchors(anchors)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = list(self.ssd.backbone(x).values())
        return self.ssd.head(features)


class ImportedSSD(RawSSD):
    """An SSD imported from ONNX (``OnnxNet``) with the priors its graph decoded with."""

    def __init__(self, graph: dict[str, Any], priors: list[list[float]]) -> None:
        super().__init__()
        self.net = OnnxNet(graph)
        p = torch.tensor(priors, dtype=torch.float32)
        self._set_anchors(torch.cat([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], 1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.net(x)


# ---- classifiers -------------------------------------------------------------------------------
class TwoHeadClassifier(nn.Module):
    """Backbone + global pool + gesture head + leading-hand head (the HaGRID authors' design)."""

    def __init__(self, name: str, num_classes: int) -> None:
        super().__init__()
        tv = getattr(torchvision.models, name)(weights=None)
        if name in MOBILENETS:
            self.features = tv.features
            width, hidden = tv.classifier[0].in_features, tv.classifier[0].out_features

            def head(n: int) -> nn.Sequential:
                return nn.Sequential(nn.Linear(width, hidden), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(hidden, n))

            self.gesture_head, self.leading_hand_head = head(num_classes), head(len(LEADING_HANDS))
        else:
            self.features = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3,
                                          tv.layer4)
            width = tv.fc.in_features
            self.gesture_head, self.leading_hand_head = nn.Linear(width, num_classes), nn.Linear(width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = torch.flatten(self.pool(self.features(x)), 1)
        return {"logits": self.gesture_head(z), "leading_hand": self.leading_hand_head(z)}


class MirroredClassifier(OnnxNet):
    """An imported crop classifier that, once trained (eval mode), answers the mean of its
    probabilities for the crop and its mirror image, as logits (their log). Our classes are all
    mirror-symmetric, so the mirror is a second look at the same gesture: the label depends less on
    a pixel of box placement. Training runs single views (with random flips), at the plain cost."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.training:
            return super().forward(x)
        probs = [torch.softmax(super(MirroredClassifier, self).forward(v)["logits"], 1) for v in (x, x.flip(3))]
        return {"logits": torch.log(((probs[0] + probs[1]) / 2).clamp_min(1e-12))}


# ---- building ----------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """What fixes a model's architecture and its input contract (saved in every checkpoint)."""

    name: str
    classes: list[str]
    input_size: tuple[int, int] = (320, 320)
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    pad_value: int = 114
    resize: str = "letterbox"
    crop: dict[str, Any] | None = None  # hand-crop classifiers: the crop their input is cut with
    graph: dict[str, Any] | None = None  # ONNX_MODELS: the layer plan (hagrid_edge.onnx_import)
    priors: list[list[float]] | None = None  # onnx_ssd: its priors, (cx, cy, w, h) input pixels
    mirror: bool = False  # onnx_classifier: answer the mean over the crop and its mirror (MirroredClassifier)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "classes": list(self.classes), "input_size": list(self.input_size),
               "mean": list(self.mean), "std": list(self.std), "pad_value": self.pad_value}
        extra = {"resize": self.resize, "crop": self.crop, "graph": self.graph, "priors": self.priors,
                 "mirror": self.mirror or None}
        return {**out, **{k: v for k, v in extra.items() if v not in (None, "letterbox")}}


def default_classes(name: str, mode: str = "gestures") -> list[str]:
    """Detector classes for ``mode`` (gestures: 18 + no_gesture; hands: one class); classifiers: 18 gestures."""
    if name == "onnx_classifier":  # hand crops: a hand showing none of the gestures is no_gesture
        return list(DETECTOR_CLASSES)
    if task_of(name) == "classifier":
        return list(GESTURES)
    if mode not in DETECTOR_MODES:
        raise HagridEdgeError(f"model.mode: {mode!r} is not one of {sorted(DETECTOR_MODES)}")
    return list(DETECTOR_MODES[mode])


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.name in ONNX_MODELS:
        if cfg.graph is None:
            raise HagridEdgeError(f"model.init: {cfg.name} takes its layers from an ONNX file; name one")
        if cfg.name == "onnx_ssd":
            return ImportedSSD(cfg.graph, cfg.priors or [])
        return MirroredClassifier(cfg.graph) if cfg.mirror else OnnxNet(cfg.graph)
    if task_of(cfg.name) == "detector":
        if tuple(cfg.input_size) != (320, 320):
            raise HagridEdgeError(f"model.input_size: {cfg.name} takes 320x320, not {list(cfg.input_size)}")
        return SSDLite(cfg.name, len(cfg.classes))
    return TwoHeadClassifier(cfg.name, len(cfg.classes))


def model_spec(cfg: ModelConfig, model: nn.Module, provenance: dict[str, Any] | None = None) -> ModelSpec:
    """The spec of ``model`` as exported: letterbox, normalisation, raw outputs and priors."""
    common = dict(classes=list(cfg.classes), input_size=tuple(cfg.input_size), resize=cfg.resize,
                  pad_value=cfg.pad_value, mean=tuple(cfg.mean), std=tuple(cfg.std), input_name="input",
                  provenance=dict(provenance or {}, model=cfg.name))
    if isinstance(model, RawSSD):
        return ModelSpec(task="detector", outputs="ssd_raw",
                         output_names={"bbox_regression": "bbox_regression", "cls_logits": "cls_logits"},
                         priors=model.priors(), box_coder_weights=BOX_CODER_WEIGHTS, box_units="pixels",
                         score_activation="softmax", background_class=True, **common)
    roles = ("logits",) if isinstance(model, OnnxNet) else ("logits", "leading_hand")
    return ModelSpec(task="classifier", outputs="logits", output_names={r: r for r in roles},
                     score_activation="softmax", crop=cfg.crop, **common)


# ---- checkpoints -------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file as a dict, with one clear error for a missing or unreadable file.

    Only tensors and plain data are unpickled (``weights_only``): a checkpoint can run code when fully
    unpickled. A trusted checkpoint that holds other objects loads with ``TRUSTED_CHECKPOINTS_ENV=1``.
    """
    path = Path(path)
    if not path.is_file():
        raise HagridEdgeError(f"{path}: no such checkpoint")
    trusted = os.environ.get(TRUSTED_CHECKPOINTS_ENV) == "1"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():  # a damaged file, not a pickle of objects
            raise HagridEdgeError(f"{path}: not a readable PyTorch checkpoint (UnpicklingError)") from None
        # a readable pickle with objects weights_only will not build
        raise HagridEdgeError(f"{path}: holds objects beyond tensors and plain data; if you trust the file, "
                              f"load it with {TRUSTED_CHECKPOINTS_ENV}=1") from None
    except Exception as e:  # torch raises pickle, zip and runtime errors for damaged files
        raise HagridEdgeError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict):
        raise HagridEdgeError(f"{path}: a checkpoint holds a dict, this one a {type(payload).__name__}")
    return payload


def model_config_of(payload: dict[str, Any], source: str) -> ModelConfig:
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise HagridEdgeError(f"{source}: not a hagrid-edge checkpoint (no 'format: {CHECKPOINT_FORMAT}'); "
                              f"use it as model.init to fine-tune from its weights")
    m = payload.get("model")
    if not isinstance(m, dict):
        raise HagridEdgeError(f"{source}: the checkpoint has no 'model' entry (its architecture and classes)")
    try:
        return ModelConfig(m["name"], list(m["classes"]), tuple(m["input_size"]), tuple(m["mean"]),
                           tuple(m["std"]), int(m["pad_value"]), m.get("resize", "letterbox"), m.get("crop"),
                           m.get("graph"), m.get("priors"), bool(m.get("mirror", False)))
    except KeyError as e:
        raise HagridEdgeError(f"{source}: the checkpoint's 'model' entry lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise HagridEdgeError(f"{source}: the checkpoint's 'model' entry is malformed ({e})") from None


def load_model(path: str | Path, use_ema: bool = True) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Model (eval mode, CPU), spec and payload of one of our checkpoints; EMA weights when saved."""
    payload = read_checkpoint(path)
    cfg = model_config_of(payload, str(path))
    model = build_model(cfg)
    state = payload.get("ema_state") if use_ema and payload.get("ema_state") else payload["model_state"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise HagridEdgeError(f"{path}: weights do not fit {cfg.name} ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, model_spec(cfg, model, payload.get("provenance")), payload


# ---- the HaGRID authors' checkpoints -----------------------------------------------------------
# Their trainers save {"MODEL_STATE": ...} (or a bare state dict) of a wrapper holding the torchvision
# model as ``torchvision_model`` (first release) or ``hagrid_model`` (second), ``module.`` under DDP.
_WRAPPER_KEYS = ("MODEL_STATE", "state_dict", "model_state_dict", "model_state", "model")
_PREFIXES = ("module.", "hagrid_model.", "torchvision_model.", "model.")
_RESNET_STEM = {"conv1.": "features.0.", "bn1.": "features.1.", "layer1.": "features.4.", "layer2.": "features.5.",
                "layer3.": "features.6.", "layer4.": "features.7."}


def _authors_key(key: str, task: str, name: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    if task == "detector":
        return "ssd." + key
    key = re.sub(r"^backbone\.0\.", "features.", key) if name in MOBILENETS else re.sub(
        r"^backbone\.(\d+)\.", r"features.\1.", key)
    renames = {"gesture_classifier.": "gesture_head.", "leading_hand_classifier.": "leading_hand_head.",
               "leading_hand.0.": "leading_hand_head.", "fc.": "gesture_head."}
    if name in MOBILENETS:
        renames["classifier."] = "gesture_head."  # plain torchvision MobileNetV3: Linear, Hardswish, Dropout, Linear
    else:
        renames["classifier.0."] = "gesture_head."
        renames.update(_RESNET_STEM)
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


@dataclass
class LoadReport:
    loaded: list[str]
    missing: list[str]  # ours, absent from the checkpoint
    unexpected: list[str]  # theirs, with no counterpart here
    mismatched: list[str]  # same name, other shape

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        for what, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("shape mismatch", self.mismatched)):
            if keys:
                parts.append(f"{len(keys)} {what} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        return "; ".join(parts)


def load_weights(model: nn.Module, path: str | Path, name: str) -> LoadReport:
    """Initialise ``model`` from a checkpoint, ours or the authors', loading every tensor that fits.

    Raises when fewer than half of the model's tensors fit: that is another architecture, not a
    different head size.
    """
    payload = read_checkpoint(path)
    if payload.get("format") == CHECKPOINT_FORMAT:
        state = payload.get("ema_state") or payload["model_state"]
    else:
        state = next((payload[k] for k in _WRAPPER_KEYS if isinstance(payload.get(k), dict)), payload)
        task = task_of(name)
        state = {_authors_key(k, task, name): v for k, v in state.items() if isinstance(v, Tensor)}
    ours = model.state_dict()
    fits = {k: v for k, v in state.items() if k in ours and ours[k].shape == v.shape}
    report = LoadReport(loaded=sorted(fits), missing=sorted(set(ours) - set(state)),
                        unexpected=sorted(set(state) - set(ours)),
                        mismatched=sorted(k for k in state if k in ours and ours[k].shape != state[k].shape))
    if len(fits) < len(ours) / 2:
        raise HagridEdgeError(f"{path}: not a {name} checkpoint: {report.summary()}")
    model.load_state_dict(fits, strict=False)
    return report


# ---- models imported from ONNX -----------------------------------------------------------------
def onnx_model(name: str, path: str | Path, classes: list[str], crop: str | None = None, mirror: bool = False
               ) -> tuple[nn.Module, ModelConfig, LoadReport]:
    """``name`` (an ``ONNX_MODELS`` entry) built from the ONNX file ``path`` with heads for ``classes``.

    Every layer keeps the file's weights except the class head, which gets one output per class
    (detectors: plus the background); the report names the layers that were replaced. ``crop``
    (hand-crop classifiers) changes how hands are cut: ``box`` crops the box itself and letterboxes it;
    ``mirror`` makes a classifier answer for the crop and its mirror image (``MirroredClassifier``).
    """
    if Path(path).suffix.lower() != ".onnx":
        raise HagridEdgeError(f"model.init: {name} takes its layers from an ONNX file, not {path}")
    net, spec = import_onnx(path, ONNX_MODELS[name])
    before = {k: v.shape for k, v in net.state_dict().items()}
    priors = None
    if name == "onnx_ssd":
        if classes != list(spec.classes):
            net.replace_ssd_classes(len(classes) + 1)
        priors = np.asarray(spec.priors, np.float32).tolist()
    else:
        net.replace_linear_classes("logits", list(spec.classes), classes)
    resize, how = spec.resize, spec.crop
    if crop is not None and (spec.crop or {}).get("kind") != crop:
        resize, how = ("letterbox" if crop == "box" else "stretch"), {"kind": crop, "expand": 1.0}
    cfg = ModelConfig(name, list(classes), tuple(spec.input_size), tuple(spec.mean), tuple(spec.std),
                      spec.pad_value, resize, how, net.plan, priors, mirror and name == "onnx_classifier")
    model = build_model(cfg)
    state = {("net." if name == "onnx_ssd" else "") + k: v for k, v in net.state_dict().items()}
    model.load_state_dict(state)
    replaced = sorted(k for k, v in net.state_dict().items() if before.get(k) != v.shape)
    kept = sorted(k for k in state if k.split("net.", 1)[-1] not in replaced)
    return model, cfg, LoadReport(loaded=kept, missing=replaced, unexpected=[], mismatched=[])
