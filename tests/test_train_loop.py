"""A few real training steps: checkpoint every epoch, --resume, SIGINT, evaluation through the pipeline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from hagrid_edge.data.annotations import load_split
from hagrid_edge.data.crops import photo_crops
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.models import load_model
from hagrid_edge.train.config import from_dict
from hagrid_edge.train.engine import Trainer, evaluate_model, lr_factor


def _config(root, out, **train):
    return {"out_dir": str(out),
            "model": {"name": "ssdlite320_mobilenet_v3_small", "mode": "gestures"},
            "data": {"root": str(root), "targets": ["call", "palm"], "workers": 0, "limit": 4, "val_limit": 1},
            "train": {"epochs": 1, "batch_size": 2, "lr": 0.01, "optimizer": "adamw", "warmup_epochs": 0.5,
                      **train}}


def _classifier_config(root, out, **train):
    cfg = _config(root, out, **train)
    cfg["model"] = {"name": "mobilenet_v3_small", "input_size": [96, 96]}
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mini_root):
    """One real epoch of the detector on 4 real images (2 steps), evaluated on a val image."""
    out = tmp_path_factory.mktemp("train") / "run"
    trainer = Trainer(from_dict(_config(mini_root, out, epochs=1, ema=0.99)), progress=False)
    trainer.fit()
    return out


def test_lr_schedule_warms_up_then_anneals():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.001)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)


def test_epoch_writes_a_loadable_checkpoint(run_dir):
    model, spec, payload = load_model(run_dir / "last.pt")
    assert payload["epoch"] == 1 and payload["ema_state"] is not None and spec.outputs == "ssd_raw"
    record = payload["history"][0]
    assert record["epoch"] == 1 and "gestures/mAP50_95" in record and "hands/mAP50" in record
    assert (run_dir / "last.pt.json").is_file() and (run_dir / "best.pt").is_file()
    assert list(run_dir.glob("*.part")) == [] and list((run_dir / "tb").glob("events.*"))


def test_checkpoints_load_with_weights_only(run_dir):
    """Our checkpoints hold tensors, numbers, strings and containers only, so loading them never needs
    to unpickle code (``torch.load(weights_only=True)``, safe on a file from anyone)."""
    import torch

    payload = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    _, _, full = load_model(run_dir / "last.pt")
    assert payload.keys() == full.keys() and payload["epoch"] == full["epoch"]
    assert all(torch.equal(v, full["model_state"][k]) for k, v in payload["model_state"].items())


def test_resume_continues_from_the_checkpoint_epoch(run_dir, mini_root, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    resumed = Trainer(from_dict(_config(mini_root, out, epochs=2, ema=0.99, eval_every=0)), resume=True,
                      progress=False)
    assert resumed.start_epoch == 1
    steps_before = resumed.scheduler.last_epoch
    result = resumed.fit()
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    assert resumed.scheduler.last_epoch == steps_before + resumed.steps_per_epoch
    assert load_model(out / "last.pt")[2]["epoch"] == 2


def test_resume_needs_a_checkpoint_of_the_same_model(run_dir, mini_root, tmp_path):
    with pytest.raises(HagridEdgeError, match="no checkpoint to resume from"):
        Trainer(from_dict(_config(mini_root, tmp_path / "none")), resume=True, progress=False)
    other = _config(mini_root, run_dir)
    other["model"]["mode"] = "hands"
    with pytest.raises(HagridEdgeError, match=r"last\.pt: cannot resume, the model differs \(classes"):
        Trainer(from_dict(other), resume=True, progress=False)


def test_classifier_trains_and_reports_f1(tmp_path, mini_root):
    result = Trainer(from_dict(_classifier_config(mini_root, tmp_path / "clf")), progress=False).fit()
    assert "f1" in result["history"][0]
    _, spec, _ = load_model(tmp_path / "clf" / "last.pt")
    assert spec.task == "classifier" and spec.output_names["logits"] == "logits"


def test_crop_classifier_distils_from_the_teacher_at_the_detector_boxes(tmp_path, mini_root, crop_classifier,
                                                                       hand_detector, capsys):
    cfg = _config(mini_root, tmp_path / "distil", batch_size=4, epoch_samples=8, teacher=str(crop_classifier),
                  distill_alpha=0.7)
    cfg["model"] = {"name": "onnx_classifier", "init": str(crop_classifier)}
    cfg["data"]["detector"] = str(hand_detector)
    trainer = Trainer(from_dict(cfg), progress=False)
    ds = trainer.train_set
    assert ds.soft is not None and len(ds.soft) == len(ds.samples)
    hands = len(photo_crops(load_split(mini_root, "train", ["call", "palm"])[:4], trainer.spec.classes))
    assert len(ds.samples) > hands and all(s.box is not None for s in ds.samples)  # + the detector's boxes
    result = trainer.fit()
    log = capsys.readouterr()
    assert "crops at" in log.out + log.err and "teacher" in log.out + log.err
    assert result["history"][0]["train/kl"] >= 0 and "f1" in result["history"][0]
    _, spec, _ = load_model(tmp_path / "distil" / "last.pt")
    assert spec.crop == {"kind": "square", "expand": 1.0} and len(spec.classes) == 19


def test_one_stage_detector_learns_from_the_hand_detector_then_with_int8_rounding(tmp_path, mini_root, hand_detector, capsys):
    cfg = _config(mini_root, tmp_path / "taught", batch_size=2, teacher=str(hand_detector), distill_alpha=1.0,
                  epochs=2, qat_epochs=1)
    cfg["model"] = {"name": "onnx_ssd", "mode": "gestures", "init": str(hand_detector)}
    result = Trainer(from_dict(cfg), progress=False).fit()
    log = capsys.readouterr()
    assert f"teacher {hand_detector}: hand probability and boxes" in log.out + log.err
    assert "epoch 2: int8 fake quantization on" in log.out + log.err and "epoch 1: int8" not in log.out + log.err
    first = result["history"][0]
    assert first["train/teacher_hand"] >= 0 and first["train/teacher_box"] >= 0 and "hands/mAP50" in first
    assert first["train/loss"] >= first["train/classification"] + first["train/bbox_regression"]
    model, spec, payload = load_model(tmp_path / "taught" / "last.pt")  # an FP32 model: no rounding saved
    assert spec.outputs == "ssd_raw" and payload["config"]["train"]["teacher"] == str(hand_detector)
    assert model.net.quantizer is None


def test_sigint_leaves_the_last_checkpoint_loadable(tmp_path, mini_root):
    out = tmp_path / "run"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_classifier_config(mini_root, out, epochs=500, eval_every=0)))
    # A suite started in the background (`&` in a non-interactive shell) ignores SIGINT, and a child inherits that
    # (Python then installs no KeyboardInterrupt handler): give train the SIGINT a terminal's Ctrl-C would.
    proc = subprocess.Popen([sys.executable, "-m", "hagrid_edge.cli", "train", "--config", str(path), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (out / "last.pt").exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in 60 s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    _, _, payload = load_model(out / "last.pt")
    assert payload["epoch"] >= 1
    assert list(out.glob("*.part")) == []


def _few_photos(root, out, gestures: tuple[str, ...], per_gesture: int):
    """A data root of ``per_gesture`` one-hand train photos of each gesture (the images stay where they are)."""
    (out / "annotations" / "train").mkdir(parents=True)
    (out / "hagrid_dataset_512").symlink_to(root / "hagrid_dataset_512")
    for g in gestures:
        entries = json.loads((root / "annotations" / "train" / f"{g}.json").read_text())
        one_hand = [(k, v) for k, v in entries.items() if len(v["labels"]) == 1][:per_gesture]
        (out / "annotations" / "train" / f"{g}.json").write_text(json.dumps(dict(one_hand)))
    return out


def test_the_detector_overfits_a_few_photos(tmp_path, mini_root, hand_detector):
    """Learning, not plumbing: 15 epochs on 9 real photos (call, palm, like) must drive the loss down and the
    gestures mAP on those photos up. The class heads start as copies of the authors' hand logit, so before
    training every box is every gesture at once (mAP about 40); a run whose weights do not move stays there."""
    import torch

    gestures = ("call", "palm", "like")
    root = _few_photos(mini_root, tmp_path / "data", gestures, 3)
    cfg = {"out_dir": str(tmp_path / "run"),
           "model": {"name": "onnx_ssd", "mode": "gestures", "classes": list(gestures), "init": str(hand_detector)},
           "data": {"root": str(root), "targets": list(gestures), "workers": 0, "val_split": "train"},
           "augment": {"hflip": 0.0, "crop": 0.0, "color": 0.0},
           "train": {"epochs": 15, "batch_size": 3, "lr": 0.002, "optimizer": "adamw", "weight_decay": 0.0,
                     "warmup_epochs": 2, "ema": None, "eval_every": 15}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order on every machine
    try:
        trainer = Trainer(from_dict(cfg), progress=False)
        assert len(trainer.val_samples) == 9 and [s.image_id for s in trainer.val_samples] == [
            s.image_id for s in trainer.train_set.samples]  # scored on the very photos it trains on
        before = evaluate_model(trainer.model, trainer.spec, trainer.val_samples, False, trainer.device)
        history = trainer.fit()["history"]
    finally:
        torch.set_num_threads(threads)
    first, last = history[0]["train/loss"], history[-1]["train/loss"]
    after = history[-1]["gestures/mAP50_95"]
    print(f"loss {first} -> {last}; gestures mAP50-95 on the 9 photos {before['gestures/mAP50_95']} -> {after}")
    assert last <= 0.4 * first, f"the loss did not fall: {first} -> {last}"
    assert after >= 65 and after >= before["gestures/mAP50_95"] + 25, (
        f"nothing learned: gestures mAP50-95 on the photos it trained on {before['gestures/mAP50_95']} -> {after}")
