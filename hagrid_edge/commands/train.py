"""``hagrid-edge train``: train a detector or classifier from a YAML config (also under ``torchrun``)."""

from __future__ import annotations

import argparse

from hagrid_edge.flags import non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an SSDLite detector or a MobileNetV3/ResNet classifier",
                       description="Train from a YAML config (see train/configs/). The same command runs "
                                   "on 1 CPU, 1 GPU, or N GPUs under `torchrun --nproc_per_node N`. A "
                                   "checkpoint (last.pt, best.pt + spec sidecars) is written every epoch.")
    p.add_argument("--config", required=True, help="YAML training config")
    p.add_argument("--data", help="HaGRID data root (overrides data.root)")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument("--epochs", type=positive_int, help="overrides train.epochs, >= 1")
    p.add_argument("--batch-size", type=positive_int, help="overrides train.batch_size (per process), >= 1")
    p.add_argument("--workers", type=non_negative_int, help="overrides data.workers, >= 0")
    p.add_argument("--limit", type=positive_int, help="train on the first N samples only (smoke runs), >= 1")
    p.add_argument("--epoch-samples", type=positive_int,
                   help="overrides train.epoch_samples (samples drawn per epoch), >= 1")
    p.add_argument("--val-limit", type=positive_int, help="evaluate on the first N val samples only, >= 1")
    p.add_argument("--init", help="checkpoint (or ONNX file, onnx_* models) to start from (overrides model.init)")
    p.add_argument("--crops", help="hand-crop folder (overrides data.crops)")
    p.add_argument("--detector", help="hand detector whose boxes on the photos give training crops "
                                      "(overrides data.detector)")
    p.add_argument("--teacher", help="model to distil from: a crop classifier for a crop classifier, a hand detector "
                   "for an onnx_ssd detector (overrides train.teacher)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (without it, a folder holding an earlier run is refused)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def refuse_earlier_run(out_dir: str, resume: bool) -> None:
    """Without --resume, a folder holding an earlier run's checkpoints is refused: its best.pt would be
    replaced by this run's first epoch."""
    from pathlib import Path

    from hagrid_edge.errors import HagridEdgeError
    from hagrid_edge.train.checkpoint import BEST, LAST

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HagridEdgeError(f"--out {out}: is a file, not a folder")
    earlier = [name for name in (LAST, BEST) if (out / name).exists()]
    if earlier and not resume:
        raise HagridEdgeError(f"--out {out}: holds an earlier run ({earlier[0]}); continue it with --resume, "
                              "or choose another folder")


def run(args: argparse.Namespace) -> int:
    import json

    from hagrid_edge.train.config import load_config
    from hagrid_edge.train.engine import Trainer

    cfg = load_config(args.config, {"data.root": args.data, "train.epochs": args.epochs,
                                    "train.batch_size": args.batch_size, "data.workers": args.workers,
                                    "data.limit": args.limit, "data.val_limit": args.val_limit,
                                    "train.epoch_samples": args.epoch_samples,
                                    "model.init": args.init, "data.crops": args.crops, "data.detector": args.detector,
                                    "train.teacher": args.teacher, "out_dir": args.out})
    refuse_earlier_run(cfg.out_dir, args.resume)
    trainer = Trainer(cfg, resume=args.resume, device=args.device, progress=not args.no_progress)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if trainer.dist.main:
        print(json.dumps({"out_dir": result["out_dir"], "best": result["best"], "world_size": result["world_size"],
                          "last": result["history"][-1] if result["history"] else None}))
    return 0
