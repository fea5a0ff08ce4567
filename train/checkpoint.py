"""Checkpoints written atomically every epoch, with the spec beside them, and resumed from.

A checkpoint holds the model's architecture and input contract (``model``), its weights (and EMA
weights), the optimizer / scheduler / AMP scaler state, the epoch it completed, the metric history
and the training config: enough to resume, evaluate (``hagrid-edge eval --model last.pt``) and
export. It goes to a temporary file renamed into place, so an interrupt never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.models import CHECKPOINT_FORMAT, ModelConfig, model_config_of, read_checkpoint
from hagrid_edge.paths import atomic_path
from hagrid_edge.spec import ModelSpec, save_sidecar

LAST, BEST = "last.pt", "best.pt"


def save_checkpoint(path: str | Path, *, model_cfg: ModelConfig, spec: ModelSpec, model_state: dict,
                    ema_state: dict | None, epoch: int, train_state: dict[str, Any], history: list[dict],
                    config: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write the checkpoint and its spec sidecar (``<path>.json``) atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT, "version": 1, "model": model_cfg.to_dict(), "model_state": model_state,
        "ema_state": ema_state, "epoch": epoch, "train_state": train_state, "history": history,
        "config": config, "provenance": provenance,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    save_sidecar(spec, path)
    return path


def load_for_resume(path: str | Path, model_cfg: ModelConfig) -> dict[str, Any]:
    """The payload of the checkpoint to resume from; it must be of the configured architecture."""
    payload = read_checkpoint(path)
    saved, wanted = model_config_of(payload, str(path)).to_dict(), model_cfg.to_dict()
    diff = [k for k, v in wanted.items() if saved.get(k) != v]
    if diff:
        what = ", ".join(f"{k}: {saved[k]!r} in the checkpoint, {wanted[k]!r} in the config" for k in diff[:2])
        raise HagridEdgeError(f"{path}: cannot resume, the model differs ({what})")
    return payload
