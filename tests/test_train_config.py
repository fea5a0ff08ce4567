"""Training configs: every bad key, type or value is refused with the key named."""

from __future__ import annotations

import json

import pytest
import yaml

from hagrid_edge.cli import main
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import REPO_ROOT
from hagrid_edge.train.config import ConfigError, from_dict, load_config


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "train" / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.model_config().classes


@pytest.mark.parametrize("data,message", [
    ({"train": {"lrr": 0.1}}, r"train\.lrr: unknown key"),
    ({"modle": {}}, r"modle: unknown key"),
    ({"train": {"lr": "fast"}}, r"train\.lr: expected a number, got 'fast'"),
    ({"train": {"epochs": 2.5}}, r"train\.epochs: expected an integer"),
    ({"model": {"name": "yolo11n"}}, r"model\.name: unknown model 'yolo11n'"),
    ({"model": {"mode": "faces"}}, r"model\.mode"),
    ({"model": {"init": "/nonexistent/x.pth"}}, r"model\.init: /nonexistent/x.pth: no such checkpoint"),
    ({"train": {"optimizer": "lion"}}, r"train\.optimizer"),
    ({"augment": {"hflip": 2}}, r"augment\.hflip"),
    ({"data": ["root"]}, r"data: expected a mapping"),
    ({"train": {"teacher": "/nonexistent/t.onnx"}}, r"train\.teacher: only hand-crop classifiers"),
    ({"train": {"distill_alpha": 1.5}}, r"train\.distill_alpha: must be in \[0, 1\]"),
    ({"train": {"qat_epochs": -1}}, r"train\.qat_epochs: must be >= 0"),
    ({"train": {"qat_epochs": 1}}, r"train\.qat_epochs: fake quantization runs on onnx_ssd and onnx_classifier"),
    ({"augment": {"jitter": 0.7}}, r"augment\.jitter"),
])
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(data, "cfg.yaml")


def test_cli_reports_config_and_data_errors_in_one_line(tmp_path, capsys, mini_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 4\n")
    assert main(["train", "--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.batchsize: unknown key" in err and str(bad) in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read config" in capsys.readouterr().err
    # A split whose annotation files hold no entries.
    root = tmp_path / "data"
    (root / "annotations" / "train").mkdir(parents=True)
    (root / "annotations" / "train" / "call.json").write_text(json.dumps({}))
    cfg = tmp_path / "empty.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "ssdlite320_mobilenet_v3_small"},
                                   "data": {"root": str(root), "val_split": None, "workers": 0}}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{root} [train]" in err and "no samples" in err


def test_config_error_is_a_hagrid_edge_error():
    assert issubclass(ConfigError, HagridEdgeError)
