"""scripts/train_mobilenet.sh, the reproduction of the shipped gesture models, run for a few steps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from hagrid_edge.labels import DETECTOR_CLASSES
from hagrid_edge.spec import resolve_spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_script_trains_exports_and_scores_both_models(mini_root, crops_root, hand_detector, tmp_path):
    crops = tmp_path / "crops"  # three real crops per class: reading all 21k would be most of the run
    for folder in sorted(crops_root.glob("*/*")):
        (crops / folder.parent.name / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:3]:
            shutil.copy(f, crops / folder.parent.name / folder.name / f.name)
    authors = tmp_path / "authors"  # not where the configs point: the script must pass it on
    shutil.copytree(hand_detector.parent, authors)
    env = {**os.environ, "SMOKE": "1", "CROPS": str(crops), "AUTHORS": str(authors),
           "HAGRID_EDGE": str(Path(sys.executable).parent / "hagrid-edge")}
    out = tmp_path / "out"
    run = subprocess.run(["bash", "scripts/train_mobilenet.sh", str(mini_root), str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    detector, classifier = resolve_spec(out / "gesture_detector.onnx"), resolve_spec(out / "gesture_classifier.onnx")
    assert detector.task == "detector" and detector.classes == list(DETECTOR_CLASSES) and detector.resize == "stretch"
    assert classifier.task == "classifier" and classifier.crop == {"kind": "square", "expand": 1.0}
    assert run.stdout.count("mAP50") >= 2  # both evals printed their tables
    assert "hand crops from the train photos" in run.stderr + run.stdout
    stage2 = torch.load(out / "detector_distill" / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert stage2["model"]["init"] == str(out / "gesture_detector_stage1.onnx")
    assert stage2["train"]["teacher"] == str(authors / "hand_detector.onnx") and stage2["train"]["qat_epochs"] > 0
    assert "int8 fake quantization on" in run.stderr + run.stdout
    config = torch.load(out / "classifier" / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert config["train"]["teacher"] == str(authors / "crops_classifier.onnx")
    assert config["data"]["detector"] == str(authors / "hand_detector.onnx")


def test_a_missing_data_folder_is_one_line(tmp_path):
    run = subprocess.run(["bash", "scripts/train_mobilenet.sh", str(tmp_path / "nowhere")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "nowhere" in run.stderr
