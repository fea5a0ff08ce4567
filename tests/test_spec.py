"""The model spec: round trips through JSON, ONNX metadata and the registry; clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from hagrid_edge.errors import SpecError
from hagrid_edge.registry import KNOWN_MODELS
from hagrid_edge.spec import (
    ModelSpec,
    Quant,
    embed_in_onnx,
    resolve_spec,
    save_sidecar,
    sha256_file,
    sidecar_path,
)


def _ssd_spec() -> ModelSpec:
    priors = np.array([[160, 160, 64, 64], [80, 80, 32, 48]], np.float32)
    return ModelSpec(task="detector", classes=["call", "fist"], input_size=(320, 320), outputs="ssd_raw",
                     output_names={"bbox_regression": "bbox_regression", "cls_logits": "cls_logits"},
                     priors=priors, input_dtype="int8", input_quant=Quant(0.0078, -1),
                     output_quant={"cls_logits": Quant(0.1, 3)}, provenance={"source_sha256": "ab"})


def test_json_round_trip_keeps_everything() -> None:
    spec = _ssd_spec()
    back = ModelSpec.from_json(spec.to_json())
    assert back.to_dict() == spec.to_dict()
    np.testing.assert_array_equal(back.priors, spec.priors)
    assert back.input_quant == Quant(0.0078, -1)


def test_registry_knows_the_authors_models_by_hash(hand_detector, crop_classifier) -> None:
    assert sha256_file(hand_detector) in KNOWN_MODELS
    det = resolve_spec(hand_detector)
    assert det.task == "detector" and det.outputs == "nms" and det.resize == "stretch"
    assert det.input_size == (240, 320)
    cls = resolve_spec(crop_classifier)
    assert len(cls.classes) == 45 and cls.crop is not None
    # 18 HaGRID gestures map to themselves, the other 27 classes to no_gesture
    assert cls.label(cls.classes.index("palm")) == "palm"
    assert cls.label(cls.classes.index("hand_down")) == "no_gesture"
    assert len(cls.labels) == 19


def test_embedded_onnx_metadata_wins_over_registry(tmp_path, hand_detector) -> None:
    model = onnx.load(str(hand_detector))
    spec = resolve_spec(hand_detector)
    spec.score_threshold = 0.42
    embed_in_onnx(model, spec)
    embed_in_onnx(model, spec)  # replacing, not duplicating
    assert sum(p.key == "hagrid_edge.spec" for p in model.metadata_props) == 1
    out = tmp_path / "det.onnx"
    onnx.save(model, str(out))
    assert resolve_spec(out).score_threshold == 0.42


def test_sidecar_wins_and_override_wins_over_sidecar(tmp_path, hand_detector) -> None:
    art = tmp_path / "m.onnx"
    shutil.copy(hand_detector, art)
    spec = resolve_spec(art)
    spec.score_threshold = 0.11
    assert save_sidecar(spec, art) == sidecar_path(art) == tmp_path / "m.onnx.json"
    assert resolve_spec(art).score_threshold == 0.11
    other = tmp_path / "other.json"
    spec.score_threshold = 0.22
    other.write_text(spec.to_json())
    assert resolve_spec(art, other).score_threshold == 0.22


@pytest.mark.parametrize("change, message", [
    ({"task": "segmenter"}, "task must be one of"),
    ({"classes": []}, "classes must be a non-empty"),
    ({"input_size": [0, 320]}, "input_size"),
    ({"outputs": "nms", "output_names": {"boxes": "b"}}, "output_names lacks"),
    ({"priors": None}, "needs priors"),
    ({"input_quant": None}, "needs input_quant"),
    ({"colour": "RGB"}, "unknown spec field"),
    ({"version": 99}, "newer than"),
])
def test_invalid_specs_name_the_field(change, message) -> None:
    d = _ssd_spec().to_dict()
    d.update(change)
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict(d, "x.json")


def test_missing_spec_and_malformed_sidecar_are_clear(tmp_path) -> None:
    art = tmp_path / "mystery.onnx"
    art.write_bytes(b"not an onnx file")
    with pytest.raises(SpecError, match="not a readable ONNX model"):
        resolve_spec(art)
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(model, str(art))
    with pytest.raises(SpecError, match="no model spec .* pass --spec FILE"):
        resolve_spec(art)
    sidecar_path(art).write_text("{broken")
    with pytest.raises(SpecError, match=r"mystery.onnx.json: not valid JSON"):
        resolve_spec(art)
    sidecar_path(art).write_text(json.dumps([1, 2]))
    with pytest.raises(SpecError, match="a spec is a JSON object"):
        resolve_spec(art)
    with pytest.raises(SpecError, match="no such model file"):
        resolve_spec(tmp_path / "absent.onnx")
