"""Pre- and post-processing: the one numpy implementation every runtime and every evaluation uses.

Frames are RGB ``uint8`` arrays of shape (H, W, 3). Boxes are ``[x1, y1, x2, y2]`` float32 in
pixels. ``Geometry`` maps boxes between frame pixels and model-input pixels for both resize
policies (letterbox and stretch), so the same object serves inference and dataset transforms.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from hagrid_edge.spec import ModelSpec, Quant

# torchvision's SSD keeps this many candidates per class before NMS.
PRE_NMS_TOPK = 400
# Slack (in logits) of the bound that picks the anchors worth scoring: far above float32 rounding.
SCORE_BOUND_MARGIN = 1e-3


@dataclass(frozen=True)
class Geometry:
    """Frame <-> model input mapping: input = frame * scale + pad."""

    frame_w: int
    frame_h: int
    input_w: int
    input_h: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        b[:, 0::2] = b[:, 0::2] * self.scale_x + self.pad_x
        b[:, 1::2] = b[:, 1::2] * self.scale_y + self.pad_y
        return b

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        b[:, 0::2] = np.clip((b[:, 0::2] - self.pad_x) / self.scale_x, 0, self.frame_w)
        b[:, 1::2] = np.clip((b[:, 1::2] - self.pad_y) / self.scale_y, 0, self.frame_h)
        return b


def fit(frame_w: int, frame_h: int, input_w: int, input_h: int, resize: str) -> Geometry:
    if resize == "stretch":
        return Geometry(frame_w, frame_h, input_w, input_h, input_w / frame_w, input_h / frame_h, 0.0, 0.0)
    s = min(input_w / frame_w, input_h / frame_h)
    new_w, new_h = round(frame_w * s), round(frame_h * s)
    pad_x, pad_y = (input_w - new_w) // 2, (input_h - new_h) // 2
    return Geometry(frame_w, frame_h, input_w, input_h, new_w / frame_w, new_h / frame_h, pad_x, pad_y)


def bilinear(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (pixel centres aligned, edges replicated) that gives the same pixels on every CPU.

    OpenCV's warpAffine interpolates in fixed point, so x86 and Arm agree to the bit; cv2.resize's
    INTER_LINEAR rounds differently per SIMD path (an INT8 model's scores follow its input), and
    INTER_LINEAR_EXACT agrees too but executes twice the instructions on a Pi.
    """
    fh, fw = frame.shape[:2]
    sx, sy = fw / width, fh / height
    to_source = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
    return cv2.warpAffine(frame, to_source, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _scaled(frame: np.ndarray, geo: Geometry, interpolation: int | None) -> np.ndarray:
    fh, fw = frame.shape[:2]
    new_w, new_h = round(fw * geo.scale_x), round(fh * geo.scale_y)
    if (new_w, new_h) == (fw, fh):
        return frame
    if interpolation is None:
        return bilinear(frame, new_w, new_h)
    return cv2.resize(frame, (new_w, new_h), interpolation=interpolation)


def letterbox(frame: np.ndarray, width: int, height: int, pad_value: int = 114,
              interpolation: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Scale ``frame`` to fit ``width`` x ``height`` keeping its aspect, centred on a ``pad_value`` canvas.

    ``interpolation``: an OpenCV flag for cv2.resize; None is ``bilinear`` (what models see).
    """
    geo = fit(frame.shape[1], frame.shape[0], width, height, "letterbox")
    resized = _scaled(frame, geo, interpolation)
    out = np.full((height, width, *frame.shape[2:]), pad_value, dtype=frame.dtype)
    px, py = int(geo.pad_x), int(geo.pad_y)
    out[py:py + resized.shape[0], px:px + resized.shape[1]] = resized
    return out, geo


def resize_frame(frame: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, Geometry]:
    """Resize (stretch or letterbox, per the spec) an RGB frame to the model's input size."""
    in_h, in_w = spec.input_size
    if spec.resize == "letterbox":
        return letterbox(frame, in_w, in_h, spec.pad_value)
    geo = fit(frame.shape[1], frame.shape[0], in_w, in_h, "stretch")
    return _scaled(frame, geo, None), geo


def _normalisation_table(spec: ModelSpec) -> np.ndarray:
    """The input tensor's value for every uint8 pixel value: shape (256,), or (256, 1, 3) per channel.

    Normalisation and input quantization are per-pixel functions of a uint8 value, so the whole
    chain ``quantize((x - mean) / std)`` is computed once for the 256 values (with the same float32
    operations, so the results are identical) and applied as one table lookup per pixel.
    """
    key = (tuple(spec.mean), tuple(spec.std), spec.color, spec.input_dtype,
           None if spec.input_quant is None else (spec.input_quant.scale, spec.input_quant.zero_point))
    return _table(key)


@functools.lru_cache(maxsize=32)
def _table(key: tuple) -> np.ndarray:
    mean, std, color, dtype, quant = key
    order = slice(None) if color == "RGB" else slice(None, None, -1)  # stats are given in RGB order
    values = np.arange(256, dtype=np.float32)[:, None]
    table = (values - np.asarray(mean, np.float32)[order]) / np.asarray(std, np.float32)[order]
    if dtype in ("int8", "uint8"):
        table = Quant(quant[0], quant[1], dtype).quantize(table)
    same = bool((table == table[:, :1]).all())  # one table for all channels: OpenCV's faster 1-channel lookup
    table = np.ascontiguousarray(table[:, 0] if same else table.reshape(256, 1, 3))
    table.setflags(write=False)
    return table


def to_tensor(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Normalise a batch of resized RGB uint8 images (N, H, W, 3) into the model's input tensor."""
    n, h, w = images.shape[:3]
    x = images[..., ::-1] if spec.color == "BGR" else images
    table = _normalisation_table(spec)  # int8, uint8 or float32: OpenCV's LUT gives the table's type
    flat = np.ascontiguousarray(x).reshape((n * h, w * 3) if table.ndim == 1 else (n * h, w, 3))
    x = cv2.LUT(flat, table).reshape(n, h, w, 3) if flat.size else np.zeros(x.shape, table.dtype)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x).astype(spec.input_dtype, copy=False)


def preprocess(frame: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, Geometry]:
    """One RGB frame -> a batch-of-one input tensor and the geometry to map boxes back."""
    image, geo = resize_frame(frame, spec)
    return to_tensor(image[None], spec), geo


# ---- post-processing ----------------------------------------------------------------------------
@dataclass
class Detections:
    """Boxes in frame pixels (xyxy), their scores, model class indices and HaGRID label names."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, indices: np.ndarray) -> Detections:
        """The detections at ``indices``, in that order."""
        idx = np.asarray(indices, np.int64)
        return Detections(self.boxes[idx], self.scores[idx], self.class_ids[idx], [self.labels[i] for i in idx])


def output(outputs: dict[str, np.ndarray], spec: ModelSpec, role: str) -> np.ndarray:
    """The float value of output ``role`` (dequantized when the artifact's output is integer)."""
    raw = np.asarray(outputs[spec.output_names[role]])
    quant = spec.output_quant.get(role)
    if quant is not None and raw.dtype.kind in "iu" and role != "labels":
        return quant.dequantize(raw)
    return raw.astype(np.float32, copy=False) if raw.dtype.kind == "f" else raw


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        return softmax(logits)
    if activation == "sigmoid":
        return sigmoid(logits)
    return logits


def candidate_rows(logits: np.ndarray, activation: str, first_class: int, threshold: float) -> np.ndarray:
    """Indices of the rows of ``logits`` (anchors) where a class from ``first_class`` on can score above ``threshold``.

    A bound that needs no exponential over all anchors: a softmax probability is at most
    exp(logit - the row's largest logit), a sigmoid passes exactly when its logit passes the
    threshold's logit. The bound is loosened by ``SCORE_BOUND_MARGIN`` so float rounding never
    drops an anchor; the exact scores of the survivors are then thresholded as before.
    """
    classes = logits[:, first_class:]
    if threshold <= 0:
        return np.arange(len(logits))
    if activation == "softmax":
        passing = classes > logits.max(axis=1, keepdims=True) + np.float32(math.log(threshold) - SCORE_BOUND_MARGIN)
    elif activation == "sigmoid":
        if threshold >= 1:
            return np.zeros(0, np.int64)
        passing = classes > np.float32(math.log(threshold / (1 - threshold)) - SCORE_BOUND_MARGIN)
    else:
        passing = classes > threshold
    return np.flatnonzero(passing.any(axis=1))


def decode_ssd(regression: np.ndarray, priors: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """SSD box decoding: per-prior offsets (dx, dy, dw, dh) against priors (cx, cy, w, h) -> xyxy."""
    wx, wy, ww, wh = weights
    dw = np.minimum(regression[:, 2] / ww, np.log(1000.0 / 16))
    dh = np.minimum(regression[:, 3] / wh, np.log(1000.0 / 16))
    cx = regression[:, 0] / wx * priors[:, 2] + priors[:, 0]
    cy = regression[:, 1] / wy * priors[:, 3] + priors[:, 1]
    w = np.exp(dw) * priors[:, 2]
    h = np.exp(dh) * priors[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS; indices of kept boxes by decreasing score (same rule as torchvision.ops.nms).

    ``max_keep`` stops once that many are kept: the same first ``max_keep`` indices, far fewer steps.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if order.size == 1 or len(keep) == max_keep:
            break
        ious = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                max_keep: int | None = None) -> np.ndarray:
    """NMS within each class (boxes of different classes never suppress each other)."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    offset = (boxes.max() + 1) * classes.astype(np.float32)[:, None]
    return nms(boxes + offset, scores, iou_threshold, max_keep)


def postprocess_detector(outputs: dict[str, np.ndarray], spec: ModelSpec, geo: Geometry,
                         score_threshold: float | None = None) -> Detections:
    """Raw outputs of one image -> detections in frame pixels, whatever the output kind."""
    thr = spec.score_threshold if score_threshold is None else score_threshold
    if spec.outputs == "nms":
        boxes = output(outputs, spec, "boxes").reshape(-1, 4)
        scores = output(outputs, spec, "scores").reshape(-1)
        class_ids = np.asarray(outputs[spec.output_names["labels"]]).reshape(-1).astype(np.int64)
        if class_ids.size == 1 and len(scores) != 1:  # single-class graphs may emit one constant label
            class_ids = np.repeat(class_ids, len(scores))
        if spec.background_class:
            class_ids = class_ids - 1
        if spec.box_units == "normalized":
            boxes = boxes * np.array([geo.input_w, geo.input_h] * 2, dtype=np.float32)
        keep = (scores >= thr) & (class_ids >= 0) & (class_ids < len(spec.classes))
        order = np.argsort(-scores[keep], kind="stable")[: spec.max_detections]
        boxes, scores, class_ids = boxes[keep][order], scores[keep][order], class_ids[keep][order]
    else:
        assert spec.priors is not None  # validated by the spec
        reg = output(outputs, spec, "bbox_regression").reshape(-1, 4)
        logits = output(outputs, spec, "cls_logits").reshape(len(reg), -1)
        # Scores and boxes only for the anchors that can pass the threshold (rows stay in anchor order).
        rows = candidate_rows(logits, spec.score_activation, 1 if spec.background_class else 0, thr)
        probs = activate(logits[rows], spec.score_activation)
        if spec.background_class:
            probs = probs[:, 1:]
        boxes_all = decode_ssd(reg[rows], spec.priors[rows], spec.box_coder_weights)
        if spec.box_units == "normalized":
            boxes_all = boxes_all * np.array([geo.input_w, geo.input_h] * 2, dtype=np.float32)
        cand_box, cand_score, cand_cls = [], [], []
        for c in range(probs.shape[1]):
            idx = np.flatnonzero(probs[:, c] > thr)
            if idx.size > PRE_NMS_TOPK:
                idx = idx[np.argsort(-probs[idx, c], kind="stable")[:PRE_NMS_TOPK]]
            cand_box.append(boxes_all[idx])
            cand_score.append(probs[idx, c])
            cand_cls.append(np.full(idx.size, c, np.int64))
        boxes, scores, class_ids = np.concatenate(cand_box), np.concatenate(cand_score), np.concatenate(cand_cls)
        keep = batched_nms(boxes, scores, class_ids, spec.iou_threshold, spec.max_detections)
        boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
    boxes = geo.to_frame(boxes)
    return Detections(boxes, scores.astype(np.float32), class_ids, [spec.label(int(c)) for c in class_ids])


def square_crop_box(box: np.ndarray, frame_w: int, frame_h: int, expand: float = 1.0) -> np.ndarray:
    """Grow a hand box to a square (short side to the long side, about its centre), clipped to the frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * expand
    out = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)
    out[0::2] = out[0::2].clip(0, frame_w)
    out[1::2] = out[1::2].clip(0, frame_h)
    return out


def crop_box(box: np.ndarray, frame_w: int, frame_h: int, crop: dict | None) -> tuple[int, int, int, int]:
    """The integer frame region a crop classifier sees for ``box`` (spec.crop says how it is cut)."""
    crop = crop or {"kind": "square", "expand": 1.0}
    if crop.get("kind") == "box":
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, x2 = min(max(x1, 0.0), frame_w), min(max(x2, 0.0), frame_w)
        y1, y2 = min(max(y1, 0.0), frame_h), min(max(y2, 0.0), frame_h)
    else:
        x1, y1, x2, y2 = square_crop_box(box, frame_w, frame_h, float(crop.get("expand", 1.0)))
    ix1, iy1 = min(int(np.floor(x1)), frame_w - 1), min(int(np.floor(y1)), frame_h - 1)
    return ix1, iy1, max(int(np.ceil(x2)), ix1 + 1), max(int(np.ceil(y2)), iy1 + 1)


def crop_inputs(frame: np.ndarray, boxes: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Hand crops of ``frame`` as one input batch for a crop classifier (spec.crop says how)."""
    fh, fw = frame.shape[:2]
    images = []
    for box in np.asarray(boxes, np.float32).reshape(-1, 4):
        x1, y1, x2, y2 = crop_box(box, fw, fh, spec.crop)
        images.append(resize_frame(frame[y1:y2, x1:x2], spec)[0])
    in_h, in_w = spec.input_size
    if not images:
        return to_tensor(np.zeros((0, in_h, in_w, 3), np.uint8), spec)
    return to_tensor(np.stack(images), spec)


def postprocess_classifier(outputs: dict[str, np.ndarray], spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, C) -> (class index, probability) per row."""
    probs = activate(output(outputs, spec, "logits").reshape(-1, len(spec.classes)), spec.score_activation)
    ids = probs.argmax(axis=1)
    return ids.astype(np.int64), probs[np.arange(len(ids)), ids].astype(np.float32)
