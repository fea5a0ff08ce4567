"""Training throughput on this machine: the data loader alone, and a training step of each model.

    python benchmarks/bench_train.py [--data ROOT] [--batches N] [--workers W]

Prints images/s for: the detection loader (real HaGRID frames, decode + box-safe augmentation +
letterbox, W workers), an SSDLite320 training step (forward, loss, backward, optimizer) for the
small and large backbones, and a MobileNetV3-small classifier step; and the loader / model ratio,
which must be >= 3 for the loader not to be the bottleneck.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from torch.utils.data import DataLoader

from hagrid_edge.data.annotations import load_split
from hagrid_edge.data.datasets import ClassificationDataset, DetectionDataset, collate, normalize
from hagrid_edge.labels import DETECTOR_CLASSES, GESTURES
from hagrid_edge.models import ModelConfig, build_model, model_spec
from hagrid_edge.paths import shared_root
from hagrid_edge.train.augment import BoxSafeAugment
from hagrid_edge.train.config import TrainConfig, TrainSection
from hagrid_edge.train.engine import _step_loss, make_optimizer


def loader_rate(dataset, batch: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    n = sum(len(images) for images, _ in itertools.islice(it, batches))
    return n / (time.perf_counter() - t0)


def step_rate(name: str, classes: list[str], dataset_cls, samples, size, batch: int, steps: int) -> float:
    cfg = ModelConfig(name, classes, size)
    model = build_model(cfg).train()
    spec = model_spec(cfg, model)
    ds = dataset_cls(samples, spec, BoxSafeAugment())
    batches = [collate([ds[(i * batch + j) % len(ds)] for j in range(batch)]) for i in range(2)]
    opt = make_optimizer(model, TrainConfig(train=TrainSection(optimizer="adamw", lr=1e-3)))

    def step(images, targets) -> None:
        loss, _ = _step_loss(model, model(normalize(images, spec)), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(*batches[0])  # warm-up (kernel selection)
    t0 = time.perf_counter()
    for i in range(steps):
        step(*batches[i % 2])
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(shared_root() / "data" / "hagrid512-mini"))
    ap.add_argument("--batches", type=int, default=6, help="loader batches / training steps timed")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    samples = load_split(args.data, "train")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{len(samples)} train samples in {args.data}")
    det_cfg = ModelConfig("ssdlite320_mobilenet_v3_small", list(DETECTOR_CLASSES))
    det_spec = model_spec(det_cfg, build_model(det_cfg))
    loader = loader_rate(DetectionDataset(samples, det_spec, BoxSafeAugment()), args.batch_size, args.workers,
                         args.batches)
    print(f"detection loader ({args.workers} workers, decode + augment + letterbox): {loader:.1f} images/s")
    rows = []
    for name in ("ssdlite320_mobilenet_v3_small", "ssdlite320_mobilenet_v3_large"):
        rate = step_rate(name, det_cfg.classes, DetectionDataset, samples, (320, 320), args.batch_size,
                         args.batches)
        rows.append((name, rate))
    rows.append(("mobilenet_v3_small (224)", step_rate("mobilenet_v3_small", list(GESTURES), ClassificationDataset,
                                                       samples, (224, 224), args.batch_size, args.batches)))
    for name, rate in rows:
        print(f"train step {name:32s} {rate:7.1f} images/s   loader / model = {loader / rate:5.1f}x")


if __name__ == "__main__":
    main()
