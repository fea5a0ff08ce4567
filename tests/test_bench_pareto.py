"""``bench --reference DET+CLS=FP32_DET+FP32_CLS``, ``--held-apart``, ``--bootstrap``, ``--agreement`` and
``--pareto`` on the shipped artifacts: the Pi's INT8 pair against its FP32 pair, the one-stage INT8
detector against its FP32 graph, on the photos no choice was made on.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import need_module

from hagrid_edge.benchmarks import report, suite
from hagrid_edge.cli import main
from hagrid_edge.paths import REPO_ROOT
from hagrid_edge.quantize.photo_sets import photo_sets

M = REPO_ROOT / "assets" / "models"
INT8_PAIR = f"{M}/hand_detector_int8.tflite+{M}/gesture_classifier_int8.tflite"
FP32_PAIR = f"{M}/hand_detector_cut.onnx+{M}/gesture_classifier.onnx"
AUTHORS_PAIR = f"{M}/hand_detector_cut.onnx+{M}/crops_classifier.onnx"
ONE_STAGE, ONE_STAGE_INT8 = M / "gesture_detector.onnx", M / "gesture_detector_int8.tflite"
LIMITS = ["--runs", "3", "--warmup", "1", "--limit", "30"]


@pytest.fixture(scope="module")
def run(mini_root, tmp_path_factory) -> dict:
    """One real bench run: both pairs, the one-stage detector and its INT8 TFLite, held-apart photos."""
    need_module("ai_edge_litert", "the shipped INT8 artifacts are TFLite ([tflite] extra)")
    out = tmp_path_factory.mktemp("pareto")
    args = ["bench", "--model", str(ONE_STAGE), str(ONE_STAGE_INT8), INT8_PAIR, FP32_PAIR, AUTHORS_PAIR,
            "--reference", f"{ONE_STAGE_INT8}={ONE_STAGE}", "--reference", f"{INT8_PAIR}={FP32_PAIR}",
            "--reference", f"{INT8_PAIR}={AUTHORS_PAIR}", "--data", str(mini_root), "--held-apart",
            "--bootstrap", "50", "--agreement", "--pareto", "--machine", "x86", "--report", str(out), *LIMITS]
    assert main(args) == 0
    return {**json.loads((out / "report.json").read_text()), "md": (out / "report.md").read_text()}


def _row(rep: dict, rid: str) -> dict:
    return next(r for r in rep["rows"] if r["id"] == rid)


def test_a_pair_gets_its_fp32_pair_as_reference(run):
    pair = _row(run, "hand_detector_int8.tflite+gesture_classifier_int8.tflite")
    fp32 = _row(run, "hand_detector_cut.onnx+gesture_classifier.onnx")
    assert pair["reference"] == fp32["id"]
    for task in ("gestures", "hands"):
        assert pair["drop"][task]["mAP50_95"] == round(fp32["accuracy"][task]["mAP50_95"]
                                                       - pair["accuracy"][task]["mAP50_95"], 2)
        assert 50 < pair["agreement"][task]["mAP50_95"] < 100  # INT8 moves some boxes, not most
    assert pair["latency_ratio"]["end_to_end"] > 0
    for task in ("gestures", "hands"):  # the paired interval of the INT8 pair minus the FP32 pair holds its change
        for metric, (low, high) in pair["change_interval"][task].items():
            assert low <= -pair["drop"][task][metric] <= high and low < high
    one_stage = _row(run, "gesture_detector_int8.tflite")
    assert one_stage["reference"] == "gesture_detector.onnx" and one_stage["agreement"]["gestures"]["mAP50_95"] > 90
    assert all("detections" not in r for r in run["rows"])  # figures only in the report


def test_the_second_reference_serves_where_the_first_was_not_benchmarked(run):
    from hagrid_edge.commands.bench import _references

    rows = [copy.deepcopy(r) for r in run["rows"] if r["id"] != "hand_detector_cut.onnx+gesture_classifier.onnx"]
    suite.attach_references(rows, _references([f"{INT8_PAIR}={FP32_PAIR}", f"{INT8_PAIR}={AUTHORS_PAIR}"]))
    assert _row({"rows": rows}, "hand_detector_int8.tflite+gesture_classifier_int8.tflite")["reference"] == \
        "hand_detector_cut.onnx+crops_classifier.onnx"


def test_held_apart_photos_and_intervals(run, mini_root):
    report_half = photo_sets(mini_root, trained=True)[1].samples[:30]
    assert run["runs"]["x86"]["held_apart"] and run["runs"]["x86"]["images"] == len(report_half)
    assert run["runs"]["x86"]["users"] == len({s.user_id for s in report_half})
    acc = _row(run, "gesture_detector.onnx")["accuracy"]["gestures"]
    assert acc["images"] == len(report_half) and acc["bootstrap"]["unit"] == "user"
    for metric in ("mAP50_95", "mAP50"):
        low, high = acc["interval"][metric]
        assert low <= acc[metric] <= high and low < high


def test_pareto_marks_exactly_the_undominated_rows(run):
    rows = [r for r in run["rows"] if not r["error"]]
    table = [[c.strip() for c in line[1:-1].split("|")] for line in run["md"].splitlines() if line.startswith("| ")]
    header = next(t for t in table if t[0] == "pipeline")
    marked = {cells[0]: cells[header.index("front")] for cells in table[table.index(header) + 1:]}
    assert set(marked) == {r["id"] for r in rows}
    for task, metric, mark in report.FRONT_METRICS:
        for r in rows:
            cost, acc = report._cost(r), report.accuracy_of(r, task, metric)
            dominated = any(o is not r and report._cost(o) <= cost and report.accuracy_of(o, task, metric) >= acc
                            and (report._cost(o), report.accuracy_of(o, task, metric)) != (cost, acc) for o in rows)
            assert (mark in marked[r["id"]].strip("*").split(", ")) != dominated, (r["id"], mark)


def test_an_emulated_device_takes_the_accuracy_of_the_same_files(run):
    """A Pi row carries instructions only; its table row shows the accuracy of the same files measured in
    its own bench run, not in another run merged into the report before it."""
    rep = copy.deepcopy(run)
    rep["machines"]["x86-pi5-emulated"] = {"emulated": "cortex-a76", "label": "x86-pi5-emulated"}
    rep["runs"]["x86-pi5-emulated"] = rep["runs"]["x86"]
    host = _row(rep, "gesture_detector_int8.tflite")
    other = copy.deepcopy(host) | {"machine": "laptop", "accuracy": {"gestures": {"mAP50_95": 1.0, "mAP50": 2.0}}}
    rep["machines"]["laptop"], rep["runs"]["laptop"] = {"label": "laptop"}, {"command": "hagrid-edge bench ..."}
    rep["rows"].insert(0, other)
    rep["rows"].append({**{k: host[k] for k in ("id", "artifacts", "precision", "kind")}, "error": None,
                        "machine": "x86-pi5-emulated", "accuracy": {}, "latency": {},
                        "instructions": {"pre": 1, "infer": 36_000_000, "post": 1, "total": 37_000_000}})
    lines = report.render_pareto(rep)
    pi = lines[lines.index("## Pareto table: x86-pi5-emulated") + 4]
    gestures = host["accuracy"]["gestures"]
    assert pi.startswith("| gesture_detector_int8.tflite | INT8 | 37.0 |")
    assert f"{gestures['mAP50_95']:.1f} [{gestures['interval']['mAP50_95'][0]:.1f}" in pi and "**G, G50, H**" in pi


@pytest.mark.parametrize("extra,message", [
    (["--reference", f"{INT8_PAIR}={M}/hand_detector_cut.onnx"], "1 source(s); a pair's reference is a pair"),
    (["--reference", f"{INT8_PAIR}={M}/nosuch.onnx+{M}/gesture_classifier.onnx"], "nosuch.onnx: no such file"),
    (["--held-apart", "--split", "train"], "--held-apart: its photos are half of val's users"),
    (["--bootstrap", "-5"], "--bootstrap -5: a number of resamples")])
def test_bad_options_are_one_clear_line(mini_root, tmp_path, capsys, extra, message):
    args = ["bench", "--model", str(ONE_STAGE), "--data", str(mini_root), "--report", str(tmp_path / "r"), *extra]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not Path(tmp_path / "r" / "report.json").exists()
