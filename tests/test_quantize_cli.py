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
from hagrid_edge.quantize import tflite_env
from hagrid_edge.quantize.accuracy import Scorer
from hagrid_edge.quantize.calib_data import calibration_batches
from hagrid_edge.quantize.onnx_int8 import collect_ranges, name_nodes, quantize_qdq, upgrade_opset
from hagrid_edge.quantize.sensitivity import layer_units, mixed_precision
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


def test_end_to_end_detector(hand_detector, mini_root, tmp_path, capsys, monkeypatch):
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
    # A converter environment that cannot be created: the TFLite target fails, the others are written.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the environment's folder should be")
    monkeypatch.setenv(tflite_env.ENV_VAR, str(blocker / "onnx2tf-env"))
    out = tmp_path / "out"
    rc, md, err = run_cli(["--subset", "--model", str(hand_detector), "--data", str(root), "--out", str(out),
                         "--targets", "onnx-int8,trt-cache,tflite-fp16", "--eval-limit", "25", "--max-drop", "100"],
                        capsys)
    assert rc == 2, err  # one target failed, the others were written
    report = json.loads((out / "calibration_report.json").read_text())
    assert (out / "calibration_report.md").read_text() == md
    cal = report["calibration"]
    assert (cal["images"], cal["skipped"], cal["skipped_files"]) == (7, 1, [str(victim)])
    assert report["graph"]["graph_cut"] and report["graph"]["opset"] == 13
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["tflite-fp16"]["ok"] is False
    assert "cannot create the TFLite converter environment" in targets["tflite-fp16"]["error"]
    int8 = targets["onnx-int8"]
    assert int8["ok"] and int8["within_max_drop"] and int8["float_layers"] == []
    assert int8["drop"] == round(report["fp32"]["score"]["value"] - int8["score"]["value"], 2)
    qdq = out / "hand_detector_int8.onnx"
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(qdq)).graph.node)
    spec = resolve_spec(qdq)
    assert spec.outputs == "ssd_raw" and spec.provenance["calibration"]["method"] == "percentile"
    assert sidecar_path(qdq).is_file() and (out / "hand_detector_fp32.onnx").is_file()
    cache = (out / "hand_detector_int8.calib").read_text().splitlines()
    assert cache[0] == "TRT-8502-EntropyCalibration2" and any(ln.startswith("input: ") for ln in cache)
    assert not list(out.glob(".*.part"))
    # hagrid-edge eval on the written file gives the report's figure
    rc = main(["eval", "--model", str(qdq), "--data", str(root), "--split", "val", "--task", "hands",
               "--limit", "25", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert rc == 0 and got["mAP50_95"] == int8["score"]["value"] and got["mAP50"] == int8["score"]["mAP50"]


def test_guard_says_plainly_when_it_cannot(crop_classifier, mini_root):
    spec = resolve_spec(crop_classifier)
    model = name_nodes(upgrade_opset(onnx.load(str(crop_classifier))))
    inputs, _ = calibration_batches(mini_root, spec, limit=6)
    ranges = collect_ranges(model, spec.input_name, inputs, "minmax")
    scorer = Scorer(mini_root, spec, limit=8)
    reference = scorer.score_model(model)
    assert reference.metric == "f1" and reference.value > 0
    first = quantize_qdq(model, ranges, "minmax")
    result = mixed_precision(model, ranges, "minmax", spec.input_name, inputs, scorer, reference,
                             (first, scorer.score_model(first)), max_drop=-1.0)  # unreachable
    assert result.within is False
    assert [t["float_layers"] for t in result.trials] == [0, 1, 2, 3, 4]
    assert len(result.sensitivity) == len(layer_units(model)) == 4
    assert result.score.value == max(t["value"] for t in result.trials)


def test_script_runs_from_the_repo_root(tmp_path):
    proc = subprocess.run([sys.executable, "quantize/calibrate.py", "--subset", "--model", str(tmp_path / "none.onnx"),
                           "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"hagrid-edge calibrate: error: {tmp_path / 'none.onnx'}: no such model file"]


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
