"""DDP wiring: two CPU processes (gloo) under torchrun train a few steps and write one checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from hagrid_edge.models import load_model


def test_torchrun_two_processes_on_cpu(tmp_path, mini_root):
    out = tmp_path / "ddp"
    cfg = {"out_dir": str(out), "model": {"name": "mobilenet_v3_small", "input_size": [96, 96]},
           "data": {"root": str(mini_root), "targets": ["call", "palm"], "workers": 0, "limit": 8, "val_limit": 2},
           "train": {"epochs": 1, "batch_size": 2, "optimizer": "adamw", "lr": 0.001}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hagrid_edge.cli", "train", "--config", str(path), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Only rank 0 prints the result and writes the checkpoint.
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and results[0]["world_size"] == 2
    _, _, payload = load_model(out / "last.pt")
    # 8 samples over 2 processes, batch 2 per process: 2 optimizer steps each (4 on one process).
    assert payload["train_state"]["scheduler"]["last_epoch"] == 2
    assert "f1" in payload["history"][0]
