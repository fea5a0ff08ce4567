"""``python quantize/calibrate.py`` / ``hagrid-edge calibrate`` end to end on real HaGRID images, and its
one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from test_quantize_calib import make_root

from hagrid_edge.cli import main
from hagrid_edge.data.annotations import load_split
from hagrid_edge.evaluate import EVAL_SCORE_THRESHOLD, evaluate_detector
from hagrid_edge.pipeline import load_pipeline
from hagrid_edge.quantize import tflite_env
from hagrid_edge.quantize.accuracy import Scorer, classifier_alone
from hagrid_edge.quantize.calib_data import calibration_batches
from hagrid_edge.quantize.candidates import Candidate, OnnxCandidates
from hagrid_edge.quantize.onnx_int8 import collect_ranges, layer_units, name_nodes, upgrade_opset
from hagrid_edge.quantize.photo_sets import photo_sets
from hagrid_edge.quantize.sensitivity import Limits, mixed_precision
from hagrid_edge.spec import resolve_spec, save_sidecar, sidecar_path

REPO = Path(__file__).resolve().parent.parent


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["calibrate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(argv: list[str], capsys, match: str) -> None:
    rc, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    assert match in lines[0], lines[0]


def _small_root(mini_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A subsample of 4 photos per gesture (call, fist; one of them unreadable) beside the real val split."""
    root = make_root(mini_root, tmp_path / "data", per_gesture=4)
    victim = next((root / "hagrid_dataset_512" / "fist").iterdir())
    victim.write_bytes(b"broken")
    (root / "annotations" / "val").symlink_to(mini_root / "annotations" / "val")
    for d in (mini_root / "hagrid_dataset_512").iterdir():
        mine = root / "hagrid_dataset_512" / d.name
        if not mine.exists():
            mine.symlink_to(d)
        else:  # the val images of the gestures whose subsample part was copied
            for image_id in json.loads((mini_root / "annotations" / "val" / f"{d.name}.json").read_text()):
                (mine / f"{image_id}.jpg").symlink_to(d / f"{image_id}.jpg")
    return root, victim


def test_end_to_end_detector(hand_detector, mini_root, tmp_path, capsys, monkeypatch):
    root, victim = _small_root(mini_root, tmp_path)
    # A converter environment that cannot be created: the TFLite target fails, the others are written.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the environment's folder should be")
    monkeypatch.setenv(tflite_env.ENV_VAR, str(blocker / "onnx2tf-env"))
    out = tmp_path / "out"
    rc, md, err = run_cli(["--subset", "--model", str(hand_detector), "--data", str(root), "--out", str(out),
                         "--targets", "onnx-int8,trt-cache,tflite-fp16", "--eval-limit", "25"], capsys)
    assert rc == 2, err  # one target failed, the others were written
    report = json.loads((out / "calibration_report.json").read_text())
    assert (out / "calibration_report.md").read_text() == md
    (stage,) = report["stages"]
    cal = stage["calibration"]
    assert (cal["images"], cal["skipped"], cal["skipped_files"]) == (7, 1, [str(victim)])
    assert stage["graph"]["graph_cut"] and stage["graph"]["opset"] == 13
    # no train split here: val is cut in two by user, and no photo is in both halves or in the subsample
    sets = report["photo_sets"]
    assert sets["tune"]["images"] == sets["report"]["images"] == 25
    tune, held = photo_sets(root, 25)
    assert not {s.image_id for s in tune.samples} & {s.image_id for s in held.samples}
    assert not {s.user_id for s in tune.samples} & {s.user_id for s in held.samples}
    targets = {t["target"]: t for t in stage["targets"]}
    assert targets["tflite-fp16"]["ok"] is False
    assert "cannot create the TFLite converter environment" in targets["tflite-fp16"]["error"]
    int8 = targets["onnx-int8"]
    assert int8["ok"] and int8["within_limits_on_tune"]
    assert int8["tune"]["photos"] == "tune" and int8["report"]["photos"] == "report"
    last = int8["trials"][-1]
    assert int8["tune"]["drop"]["mAP50_95"] <= 0.5 and int8["tune"]["agreement"]["mAP50_95"] >= 99.0
    assert (last["value"], last["agreement"]) == (int8["tune"]["value"], int8["tune"]["agreement"]["mAP50_95"])
    assert all(t["float_layers"] < last["float_layers"] for t in int8["trials"][:-1])
    assert int8["report"]["drop"]["mAP50_95"] == round(
        stage["fp32"]["report"]["value"] - int8["report"]["value"], 2)
    assert stage["fp32"]["tune"]["agreement"]["mAP50_95"] == 100.0  # FP32 agrees with itself
    qdq = out / "hand_detector_int8.onnx"
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(qdq)).graph.node)
    spec = resolve_spec(qdq)
    assert spec.outputs == "ssd_raw" and spec.provenance["calibration"]["method"] == "percentile"
    assert spec.provenance["float_layers"] == int8["float_layers"]
    assert sidecar_path(qdq).is_file() and (out / "hand_detector_fp32.onnx").is_file()
    cache = (out / "hand_detector_int8.calib").read_text().splitlines()
    scaled = {ln.split(": ")[0] for ln in cache[1:]}
    nodes = {n.name: n for n in onnx.load(str(out / "hand_detector_fp32.onnx")).graph.node}
    float_inputs = {nodes[name].input[0] for name in int8["float_layers"]}
    assert cache[0] == "TRT-8502-EntropyCalibration2" and len(scaled) > 50
    assert not scaled & float_inputs  # layers kept in float get no INT8 scale from TensorRT either
    assert not list(out.glob(".*.part"))
    # the same code as `hagrid-edge eval` on the written file gives the report's figure
    got = evaluate_detector(load_pipeline(qdq, score_threshold=EVAL_SCORE_THRESHOLD), held.labelled_samples(),
                            "hands", progress=False)
    assert (got["mAP50_95"], got["mAP50"]) == (int8["report"]["value"], int8["report"]["mAP50"])


def test_guard_keeps_layers_in_float_until_the_limits_hold(hand_detector, mini_root, tmp_path, capsys):
    """An agreement limit no INT8 form reaches with every layer in INT8: the guard must keep layers in
    float, and the artifact it ships must meet the limit on the tune photos."""
    out = tmp_path / "out"
    rc, md, err = run_cli(["--subset", "--model", str(hand_detector), "--data", str(mini_root), "--out", str(out),
                           "--targets", "onnx-int8", "--limit", "20", "--eval-limit", "30",
                           "--min-agreement", "99.5"], capsys)
    assert rc == 0, err
    (target,) = json.loads((out / "calibration_report.json").read_text())["stages"][0]["targets"]
    assert target["trials"][0]["float_layers"] == 0 and target["trials"][0]["agreement"] < 99.5
    assert target["within_limits_on_tune"] and target["tune"]["agreement"]["mAP50_95"] >= 99.5
    assert len(target["float_layers"]) == target["trials"][-1]["float_layers"] > 0
    assert resolve_spec(out / "hand_detector_int8.onnx").provenance["float_layers"] == target["float_layers"]
    assert "Mixed precision (onnx-int8)" in md


def test_guard_says_plainly_when_it_cannot(crop_classifier, mini_root, tmp_path):
    spec = resolve_spec(crop_classifier)
    model = name_nodes(upgrade_opset(onnx.load(str(crop_classifier))))
    inputs, _ = calibration_batches(mini_root, spec, limit=6)
    ranges = collect_ranges(model, spec.input_name, inputs, "minmax")
    tune, _ = photo_sets(mini_root, 8)
    scorer = Scorer(tune, "classify", classifier_alone(None))
    fp32 = Candidate(tmp_path / "fp32.onnx", spec, [])
    onnx.save(model, str(fp32.path))
    reference = scorer.score(fp32.path, spec)
    assert reference.metric == "f1" and reference.value > 0
    cands = OnnxCandidates(model, spec, ranges, "minmax", tmp_path)
    result = mixed_precision(cands, fp32, load_split(mini_root, "subsample")[:6], scorer, reference,
                             Limits(max_drop=-1.0, min_agreement=None))  # unreachable
    assert result.within is False
    assert [t["float_layers"] for t in result.trials] == [0, 1, 2, 3, 4]
    assert len(result.sensitivity) == len(layer_units(model)) == 4
    assert result.score.value == max(t["value"] for t in result.trials)


def test_script_runs_from_the_repo_root(tmp_path):
    proc = subprocess.run([sys.executable, "quantize/calibrate.py", "--subset", "--model", str(tmp_path / "none.onnx"),
                           "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"hagrid-edge calibrate: error: --model {tmp_path / 'none.onnx'}: no such file"]


def test_model_without_spec(hand_detector, mini_root, tmp_path, capsys):
    model = onnx.load(str(hand_detector))
    model.doc_string = "changed, so the registry does not know it"
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    one_line_error(["--subset", "--model", str(path), "--data", str(mini_root), "--out", str(tmp_path / "o")],
                   capsys, "foreign.onnx: no model spec")


def test_data_root_without_subsample(hand_detector, tmp_path, capsys):
    (tmp_path / "d" / "annotations" / "val").mkdir(parents=True)
    one_line_error(["--subset", "--model", str(hand_detector), "--data", str(tmp_path / "d"), "--out",
                    str(tmp_path / "o")], capsys, "no HaGRID subsample")


def test_empty_calibration_set(hand_detector, tmp_path, capsys):
    ann = tmp_path / "d" / "annotations" / "subsample"
    ann.mkdir(parents=True)
    (ann / "like.json").write_text("{}")
    one_line_error(["--subset", "--model", str(hand_detector), "--data", str(tmp_path / "d"), "--out",
                    str(tmp_path / "o")], capsys, "no usable entries")


def test_all_images_corrupt(hand_detector, mini_root, tmp_path, capsys):
    root = make_root(mini_root, tmp_path / "d", per_gesture=1)
    for p in (root / "hagrid_dataset_512").rglob("*.jpg"):
        p.write_bytes(b"x")
    one_line_error(["--subset", "--model", str(hand_detector), "--data", str(root), "--out", str(tmp_path / "o")],
                   capsys, "none of the 2 subsample images could be read")


def test_unsupported_opset_and_op(crop_classifier, mini_root, tmp_path, capsys):
    spec = resolve_spec(crop_classifier)
    old = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["input"], ["labels"])], "old",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 128, 128])],
        [onnx.helper.make_tensor_value_info("labels", onnx.TensorProto.FLOAT, [1, 3, 128, 128])]),
        opset_imports=[onnx.helper.make_opsetid("", 6)])
    onnx.save(old, str(tmp_path / "old.onnx"))
    save_sidecar(spec, tmp_path / "old.onnx")
    one_line_error(["--subset", "--model", str(tmp_path / "old.onnx"), "--data", str(mini_root), "--out",
                    str(tmp_path / "o")], capsys, "old.onnx: opset 6 is too old")
    custom = onnx.load(str(crop_classifier))
    custom.graph.node[0].op_type, custom.graph.node[0].domain = "FancyConv", "com.example"
    custom.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(custom, str(tmp_path / "custom.onnx"))
    save_sidecar(spec, tmp_path / "custom.onnx")
    one_line_error(["--subset", "--model", str(tmp_path / "custom.onnx"), "--data", str(mini_root), "--out",
                    str(tmp_path / "o")], capsys, "custom.onnx: unsupported graph for calibration")


def test_bad_model_files_and_options(tmp_path, capsys, mini_root):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not a checkpoint")
    rc, _, err = run_cli(["--subset", "--model", str(ckpt), "--data", str(mini_root), "--out", str(tmp_path / "o")],
                         capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "model.pt" in err
    one_line_error(["--subset", "--model", str(tmp_path / "w.tflite"), "--out", str(tmp_path / "o")], capsys,
                   "calibrate takes an FP32 .onnx or a training checkpoint")
    one_line_error(["--subset", "--limit", "0", "--out", str(tmp_path / "o")], capsys, "--limit must be positive")
    with pytest.raises(SystemExit):
        main(["calibrate", "--targets", "onnx-int8,tensorflow", "--out", str(tmp_path / "o")])
    assert "unknown target(s) ['tensorflow']" in capsys.readouterr().err


def test_pair_is_calibrated_guarded_and_reported(hand_detector, crop_classifier, mini_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc, md, err = run_cli(["--subset", "--model", str(hand_detector), "--classifier", str(crop_classifier),
                           "--data", str(mini_root), "--out", str(out), "--targets", "onnx-int8", "--limit", "20",
                           "--eval-limit", "12"], capsys)
    assert rc == 0, err
    report = json.loads((out / "calibration_report.json").read_text())
    det, cls = report["stages"]
    assert (det["role"], cls["role"]) == ("detector", "classifier")
    (det_int8,) = det["targets"]
    # the detector's float layers are chosen on the pair's gestures with the FP32 classifier behind it,
    # against the pair with its all-float form; its own row stays on hands
    guard_ref = det_int8["guarded_against"]
    assert guard_ref["task"] == "gestures" and "all-float detector" in guard_ref["what"]
    assert det_int8["tune"]["task"] == "hands" and det_int8["report"]["task"] == "hands"
    # the guard always reaches its limits here (its last candidate is the all-float form it is judged
    # against), and the exit code says so: what it ships holds them, on the pair and on hands alone
    assert det_int8["within_limits_on_tune"]
    chosen = next(t for t in det_int8["trials"] if t["float_layers"] == len(det_int8["float_layers"]))
    assert chosen["agreement"] >= guard_ref["agreement"]["mAP50_95"] - 1.0
    assert chosen["value"] >= guard_ref["value"] - 0.5
    assert det_int8["tune"]["drop"]["mAP50_95"] <= 0.5 and det_int8["tune"]["agreement"]["mAP50_95"] >= 99.0
    (cls_int8,) = cls["targets"]
    # the classifier is judged in the pipeline (gestures, behind the INT8 detector), not on crops alone
    assert cls_int8["tune"]["task"] == "gestures" and cls_int8["tune"]["agreement"]
    assert cls["fp32"]["tune"]["agreement"]["mAP50_95"] == 100.0  # the FP32 pair agrees with itself
    (pair,) = report["pairs"]
    assert pair["target"] == "onnx-int8" and pair["ok"]
    assert pair["detector"] == str(out / "hand_detector_int8.onnx")
    assert pair["classifier"] == str(out / "crops_classifier_int8.onnx")
    assert set(pair) >= {"tune", "report"} and pair["report"]["int8"]["photos"] == "report"
    fp32_pair = pair["report"]["fp32"]
    assert fp32_pair["value"] == cls["fp32"]["report"]["value"] and fp32_pair["task"] == "gestures"
    assert "Two-stage pipeline (gestures)" in md
    assert resolve_spec(out / "crops_classifier_int8.onnx").provenance["calibration"]["inputs"] >= 20


def test_detector_guarded_on_hands_alone_on_request(hand_detector, crop_classifier, mini_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc, md, err = run_cli(["--subset", "--model", str(hand_detector), "--classifier", str(crop_classifier),
                           "--data", str(mini_root), "--out", str(out), "--targets", "onnx-int8", "--limit", "8",
                           "--eval-limit", "6", "--detector-guard", "hands"], capsys)
    assert rc == 0, err
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["limits"]["detector_guard"] == "hands"
    (det_int8,) = report["stages"][0]["targets"]
    # guarded on its own task: no pair reference, trials scored on hands against the FP32 detector
    assert "guarded_against" not in det_int8 and det_int8["tune"]["task"] == "hands"
    assert det_int8["tune"]["value"] in [t["value"] for t in det_int8["trials"]]
    assert "on hands, the detector alone" in md and report["pairs"][0]["ok"]


def test_classifier_that_does_not_fit_the_detector(hand_detector, crop_classifier, mini_root, tmp_path, capsys):
    base = ["--subset", "--data", str(mini_root), "--out", str(tmp_path / "o"), "--limit", "2"]
    one_line_error(base + ["--model", str(hand_detector), "--classifier", str(hand_detector)], capsys,
                   "the same file as --model")
    copy = tmp_path / "det_copy.onnx"
    copy.write_bytes(hand_detector.read_bytes())
    one_line_error(base + ["--model", str(hand_detector), "--classifier", str(copy), "--classifier-spec",
                           str(sidecar_for(hand_detector, tmp_path))], capsys,
                   f"--classifier {copy}: not a hand-crop classifier (a detector)")
    one_line_error(base + ["--model", str(crop_classifier), "--classifier", str(copy), "--classifier-spec",
                           str(sidecar_for(hand_detector, tmp_path))], capsys,
                   "a crop classifier needs a hand detector in front of it (this model's spec says classifier)")
    assert not (tmp_path / "o" / "calibration_report.json").exists()


def sidecar_for(model: Path, tmp_path: Path) -> Path:
    """The model's registry spec written as a spec file (for a copy the registry does not know by name)."""
    path = tmp_path / f"{model.stem}.spec.json"
    path.write_text(resolve_spec(model).to_json())
    return path
