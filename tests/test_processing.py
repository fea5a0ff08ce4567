"""The shared pre/post-processing against torchvision's reference ops, on real HaGRID boxes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import need_module
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms as tv_batched_nms

from hagrid_edge.data.annotations import load_split
from hagrid_edge.images import read_rgb
from hagrid_edge.processing import (
    Geometry,
    activate,
    batched_nms,
    candidate_rows,
    crop_inputs,
    decode_ssd,
    fit,
    preprocess,
    resize_frame,
    square_crop_box,
    to_tensor,
)
from hagrid_edge.spec import ModelSpec, Quant, resolve_spec


@pytest.fixture(scope="module")
def val_samples(mini_root):
    return load_split(mini_root, "val")


def _letterbox_spec(**kw) -> ModelSpec:
    return ModelSpec(task="detector", classes=["hand"], input_size=(320, 320), outputs="nms",
                     output_names={"boxes": "b", "scores": "s", "labels": "l"}, **kw)


def _jittered_real_boxes(samples, copies: int = 6):
    """Real annotation boxes (pixels of a 683x512 frame), each with jittered near-duplicates."""
    rng = np.random.default_rng(0)
    real = np.concatenate([s.boxes_xyxy(683, 512) for s in samples[:40]])
    boxes = np.repeat(real, copies, axis=0) + rng.normal(0, 6, (len(real) * copies, 4)).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = rng.random(len(boxes)).astype(np.float32)
    classes = rng.integers(0, 3, len(boxes))
    return boxes, scores, classes


def test_batched_nms_matches_torchvision(val_samples) -> None:
    boxes, scores, classes = _jittered_real_boxes(val_samples)
    for iou in (0.3, 0.5, 0.7):
        ours = batched_nms(boxes, scores, classes, iou)
        ref = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), iou)
        np.testing.assert_array_equal(ours, ref.numpy())


def test_decode_matches_torchvision_box_coder(val_samples) -> None:
    rng = np.random.default_rng(1)
    anchors_xyxy = np.concatenate([s.boxes_xyxy(320, 320) for s in val_samples[:50]])
    rel = rng.normal(0, 1, anchors_xyxy.shape).astype(np.float32)
    ref = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(torch.from_numpy(rel), torch.from_numpy(anchors_xyxy))
    wh = anchors_xyxy[:, 2:] - anchors_xyxy[:, :2]
    priors = np.concatenate([anchors_xyxy[:, :2] + wh / 2, wh], axis=1)
    np.testing.assert_allclose(decode_ssd(rel, priors, (10, 10, 5, 5)), ref.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_geometry_round_trip_and_letterbox_padding(val_samples, resize) -> None:
    s = val_samples[0]
    frame = read_rgb(s.image_path)
    spec = _letterbox_spec(resize=resize, pad_value=114)
    image, geo = resize_frame(frame, spec)
    assert image.shape == (320, 320, 3)
    gt = s.boxes_xyxy(frame.shape[1], frame.shape[0])
    np.testing.assert_allclose(geo.to_frame(geo.to_input(gt)), gt, atol=1e-3)
    if resize == "letterbox":
        assert geo.scale_x == pytest.approx(geo.scale_y, rel=1e-2)  # aspect kept
        assert geo.pad_x > 0 and (image[:, : int(geo.pad_x)] == 114).all()
    else:
        assert geo.pad_x == geo.pad_y == 0


def test_fit_is_centred_for_portrait_and_landscape() -> None:
    g = fit(683, 512, 320, 320, "letterbox")
    assert g.pad_x == 0 and g.pad_y == (320 - round(512 * 320 / 683)) // 2
    g = fit(512, 683, 320, 320, "letterbox")
    assert g.pad_y == 0 and g.pad_x > 0
    assert isinstance(g, Geometry)


def test_to_tensor_normalises_and_quantizes(val_samples) -> None:
    frame = read_rgb(val_samples[0].image_path)
    spec = _letterbox_spec(mean=(127, 127, 127), std=(128, 128, 128))
    x, _ = preprocess(frame, spec)
    assert x.shape == (1, 3, 320, 320) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    q = _letterbox_spec(mean=(127, 127, 127), std=(128, 128, 128), layout="NHWC", input_dtype="int8",
                        input_quant=Quant(1 / 128, 0, "int8"))
    xq, _ = preprocess(frame, q)
    assert xq.shape == (1, 320, 320, 3) and xq.dtype == np.int8
    np.testing.assert_allclose(q.input_quant.dequantize(xq), x.transpose(0, 2, 3, 1), atol=1 / 128 + 1e-6)
    bgr = _letterbox_spec(color="BGR")
    image, _ = resize_frame(frame, bgr)
    np.testing.assert_allclose(to_tensor(image[None], bgr)[0, 0], image[..., 2] / 255.0, atol=1e-6)


def test_square_crops_follow_the_authors_recipe(val_samples, crop_classifier) -> None:
    s = val_samples[0]
    frame = read_rgb(s.image_path)
    box = s.boxes_xyxy(frame.shape[1], frame.shape[0])[0]
    sq = square_crop_box(box, frame.shape[1], frame.shape[0])
    side = max(box[2] - box[0], box[3] - box[1])
    assert sq[2] - sq[0] == pytest.approx(side, abs=1e-3) or sq[0] == 0 or sq[2] == frame.shape[1]
    x = crop_inputs(frame, np.stack([box, box]), resolve_spec(crop_classifier))
    assert x.shape == (2, 3, 128, 128)
    assert crop_inputs(frame, np.zeros((0, 4)), resolve_spec(crop_classifier)).shape == (0, 3, 128, 128)


@pytest.mark.parametrize("color", ["RGB", "BGR"])
@pytest.mark.parametrize(("layout", "dtype", "quant"), [("NCHW", "float32", None), ("NHWC", "float16", None),
                                                        ("NHWC", "int8", Quant(0.0186, -14, "int8")),
                                                        ("NCHW", "uint8", Quant(1 / 64, 128, "uint8"))])
def test_lookup_table_is_normalise_then_quantize(val_samples, color, layout, dtype, quant) -> None:
    """One table lookup per pixel gives exactly what the float chain gives (per-channel stats, any colour order)."""
    frames = [read_rgb(s.image_path) for s in val_samples[:2]]
    spec = _letterbox_spec(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), color=color, layout=layout,
                           input_dtype=dtype, input_quant=quant)
    images = np.stack([resize_frame(f, spec)[0] for f in frames])
    x = images[..., ::-1] if color == "BGR" else images
    order = slice(None) if color == "RGB" else slice(None, None, -1)
    ref = (x.astype(np.float32) - np.float32(spec.mean)[order]) / np.float32(spec.std)[order]
    ref = quant.quantize(ref) if quant else ref.astype(dtype)
    if layout == "NCHW":
        ref = ref.transpose(0, 3, 1, 2)
    out = to_tensor(images, spec)
    assert out.dtype == np.dtype(dtype) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ref)
    assert to_tensor(images[:0], spec).shape == (0, *ref.shape[1:])


@pytest.fixture(scope="module")
def int8_detector_logits(val_samples):
    """Real class logits of the shipped INT8 TFLite hand detector (anchors x [background, hand]) on val photos."""
    need_module("ai_edge_litert", "the shipped INT8 TFLite detector runs on LiteRT (the [tflite] extra)")
    from hagrid_edge.deploy.common.backend import open_backend
    from hagrid_edge.paths import DEFAULT_MODELS
    from hagrid_edge.processing import output

    backend = open_backend(DEFAULT_MODELS / "hand_detector_int8.tflite", threads=1)
    return [output(backend.infer(preprocess(read_rgb(s.image_path), backend.spec)[0]), backend.spec, "cls_logits")[0]
            for s in val_samples[:12]]


@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
def test_candidate_rows_keep_every_anchor_that_can_pass(int8_detector_logits, activation) -> None:
    selective = []
    for logits in int8_detector_logits:
        for thr in (0.01, 0.3, 0.7, 0.95):
            scores = activate(logits, activation)[:, 1:]
            passing = np.flatnonzero((scores > thr).any(axis=1))
            rows = candidate_rows(logits, activation, 1, thr)
            assert np.all(np.diff(rows) > 0) and set(passing) <= set(rows)  # anchor order, nothing lost
            if thr == 0.7 and activation == "softmax":
                selective.append(len(rows) / len(logits))
    assert max(selective or [0]) < 0.05  # at the shipped threshold only a few anchors are scored
    assert len(candidate_rows(int8_detector_logits[0], activation, 1, 0.0)) == len(int8_detector_logits[0])


def test_bilinear_is_opencvs_bilinear(val_samples) -> None:
    """warpAffine's fixed-point bilinear: within one grey level of cv2.resize's bit-exact bilinear, both ways."""
    from hagrid_edge.processing import bilinear

    frame = read_rgb(val_samples[0].image_path)
    for w, h in ((320, 240), (320, 427), (128, 128)):
        ours = bilinear(frame, w, h)
        ref = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR_EXACT)
        assert ours.shape == ref.shape and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - ref).max() <= 1 and (ours == ref).mean() > 0.9
    crop = frame[100:140, 200:230]  # a small hand-sized crop, upscaled as crop classifiers do
    ours, ref = bilinear(crop, 128, 128), cv2.resize(crop, (128, 128), interpolation=cv2.INTER_LINEAR_EXACT)
    assert np.abs(ours.astype(int) - ref).max() <= 2 and np.abs(ours.astype(int) - ref).mean() < 0.5
