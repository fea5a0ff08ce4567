"""One training loop for detectors and classifiers, on 1 CPU, 1 GPU or N GPUs (``torchrun``).

Per epoch: train with warm-up + cosine LR, gradient clipping, optional EMA and (on CUDA) AMP and
channels_last; evaluate on the val split through the deployment code path (``TorchBackend`` +
``hagrid_edge.pipeline`` + ``hagrid_edge.evaluate``); write ``last.pt`` (and ``best.pt``) atomically;
stop early when the val metric stops improving.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, WeightedRandomSampler
from tqdm import tqdm

from hagrid_edge.data.annotations import Sample, load_split
from hagrid_edge.data.crops import CropDataset, detected_crops, folder_crops, photo_crops
from hagrid_edge.data.datasets import ClassificationDataset, DetectionDataset, collate, normalize
from hagrid_edge.deploy.common.backend import open_backend
from hagrid_edge.deploy.common.torch_backend import TorchBackend
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.evaluate import (
    EVAL_SCORE_THRESHOLD,
    evaluate_classifier,
    run_detector,
    score_detections,
)
from hagrid_edge.models import (
    ONNX_MODELS,
    RawSSD,
    build_model,
    load_weights,
    model_spec,
    onnx_model,
)
from hagrid_edge.pipeline import CropClassifier, Detector, FrameClassifier
from hagrid_edge.spec import ModelSpec
from hagrid_edge.train import distributed
from hagrid_edge.train.augment import BoxSafeAugment
from hagrid_edge.train.checkpoint import BEST, LAST, load_for_resume, save_checkpoint
from hagrid_edge.train.config import TrainConfig
from hagrid_edge.train.distill import detector_distill_loss, detector_teacher, distill_loss, teacher_targets
from hagrid_edge.train.ema import ModelEMA
from hagrid_edge.train.fake_quant import FakeQuantizer


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return 0.001 + (1 - 0.001) * step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norm layers and biases (1-d tensors)."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    t = cfg.train
    groups = _param_groups(model, t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0)


def evaluate_model(model: nn.Module, spec: ModelSpec, samples: list[Sample], hands_only: bool,
                   device: torch.device, progress: bool = False) -> dict[str, float]:
    """Val metrics through the deployment path; detectors: gestures and hands mAP from one pass."""
    backend = TorchBackend.from_model(model, spec, device)
    if spec.task == "classifier":
        classifier = CropClassifier(backend) if spec.crop else FrameClassifier(backend)
        r = evaluate_classifier(classifier, samples, progress=progress)
        return {"f1": r["f1"], "accuracy": r["accuracy"]}
    dets, sizes = run_detector(Detector(backend, EVAL_SCORE_THRESHOLD), samples, progress)
    out: dict[str, float] = {}
    for task in ("hands",) if hands_only else ("gestures", "hands"):
        r = score_detections(samples, sizes, dets, task)
        out[f"{task}/mAP50_95"], out[f"{task}/mAP50"] = r["mAP50_95"], r["mAP50"]
    return out


def _step_loss(raw: nn.Module, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
               distill_alpha: float, teacher: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(raw, RawSSD):
        parts = raw.loss(outputs, targets)
        loss, logged = sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}
        if teacher is not None:  # a detector learning hands from a hand detector as well
            taught, taught_parts = detector_distill_loss(outputs, teacher)
            loss, logged = loss + distill_alpha * taught, {**logged, **taught_parts}
        return loss, logged
    gesture = torch.stack([t["gesture"] for t in targets])
    if "soft" in targets[0]:  # a hand-crop classifier learning from a teacher
        return distill_loss(outputs["logits"], torch.stack([t["soft"] for t in targets]), gesture, distill_alpha)
    logits = {k: v.float() for k, v in outputs.items()}
    g_loss = F.cross_entropy(logits["logits"], gesture)
    if "leading_hand" not in logits:  # a hand-crop classifier: one head
        return g_loss, {"gesture": float(g_loss.detach())}
    hand = torch.stack([t["leading_hand"] for t in targets])
    # The leading-hand head learns only where the annotation has leading_hand (HaGRID v1 files).
    h_loss = (F.cross_entropy(logits["leading_hand"], hand, ignore_index=-1) if bool((hand >= 0).any())
              else logits["leading_hand"].sum() * 0.0)
    return g_loss + h_loss, {"gesture": float(g_loss.detach()), "leading_hand": float(h_loss.detach())}


class Trainer:
    """Builds everything a training run needs from its config, then ``fit`` runs the epochs."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, device: str | None = None,
                 progress: bool = True) -> None:
        self.cfg, self.progress = cfg, progress
        self.dist = distributed.setup(device)
        self.device = self.dist.device
        self.cuda = self.device.type == "cuda"
        self.out = Path(cfg.out_dir)
        self._seed()
        self._build_model(init=not resume)
        self._build_data()
        self._build_optimization()
        if resume:
            self._resume()
        self._wrap_for_devices()
        self._open_writer()

    # ---- construction steps ---------------------------------------------------------------------
    def _seed(self) -> None:
        seed = self.cfg.train.seed
        torch.manual_seed(seed + self.dist.rank)
        random.seed(seed)
        np.random.seed(seed)

    def _build_model(self, init: bool) -> None:
        """The model (from ``model.init`` weights unless resuming), its spec and provenance."""
        cfg, m = self.cfg, self.cfg.model
        self.init_report = None
        if m.name in ONNX_MODELS and init:  # the file gives the layers, their weights and the input contract
            self.model, self.model_cfg, self.init_report = onnx_model(m.name, m.init, cfg.classes, m.crop, m.mirror)
        else:
            self.model_cfg = cfg.model_config()
            self.model = build_model(self.model_cfg)
            if m.init and init:
                self.init_report = load_weights(self.model, m.init, m.name)
        if self.init_report is not None:
            self.log(f"init from {m.init}: {self.init_report.summary()}")
        self.provenance = {"config": cfg.to_dict(), "init": cfg.model.init, "torch": str(torch.__version__)}
        self.spec = model_spec(self.model_cfg, self.model, {"trained_on": f"{cfg.data.root}:{cfg.data.train_split}"})
        self.hands_only = list(self.model_cfg.classes) == ["hand"]
        self.teacher = None
        if cfg.train.teacher and self.spec.task == "detector":
            self.teacher = detector_teacher(cfg.train.teacher, self.spec).to(self.device)
            self.log(f"teacher {cfg.train.teacher}: hand probability and boxes at every anchor")

    def _build_data(self) -> None:
        """The augmented train set, its sampler and loader, and the val samples."""
        cfg, t = self.cfg, self.cfg.train
        train_samples = load_split(cfg.data.root, cfg.data.train_split, cfg.data.targets)[: cfg.data.limit]
        aug = BoxSafeAugment(cfg.augment.hflip, cfg.augment.crop, cfg.augment.min_crop, cfg.augment.color)
        try:
            if self.spec.crop is not None:
                self.train_set = self._crop_set(train_samples)
            else:
                dataset_cls = DetectionDataset if self.spec.task == "detector" else ClassificationDataset
                self.train_set = dataset_cls(train_samples, self.spec, aug, seed=t.seed)
        except HagridEdgeError as e:
            raise HagridEdgeError(f"{cfg.data.root} [{cfg.data.train_split}]: {e}") from None
        self.val_samples: list[Sample] = []
        if cfg.data.val_split and t.eval_every > 0:
            self.val_samples = load_split(cfg.data.root, cfg.data.val_split, cfg.data.targets)[: cfg.data.val_limit]
            if not self.val_samples:
                raise HagridEdgeError(f"{cfg.data.root} [{cfg.data.val_split}]: no samples to evaluate on")
        self.sampler = self._sampler()
        self.loader = DataLoader(self.train_set, batch_size=t.batch_size, sampler=self.sampler,
                                 num_workers=cfg.data.workers, collate_fn=collate, pin_memory=self.cuda,
                                 drop_last=len(self.train_set) // self.dist.world > t.batch_size)
        if len(self.loader) == 0:
            raise HagridEdgeError(f"{cfg.data.root} [{cfg.data.train_split}]: too few samples for one batch")

    def _crop_set(self, photos: list[Sample]) -> CropDataset:
        """The hands of the split's photos, plus a crop folder (``data.crops``) and crops at a hand
        detector's boxes (``data.detector``) when named; with ``train.teacher`` its targets for all."""
        cfg, classes, teacher = self.cfg, self.spec.classes, self.cfg.train.teacher
        crops = photo_crops(photos, classes)
        self.log(f"{len(crops)} hand crops from the {cfg.data.train_split} photos")
        if cfg.data.detector:
            detector = Detector(open_backend(cfg.data.detector, threads=1), cfg.data.detector_min_score)
            found = detected_crops(photos, detector, classes, cfg.data.detector_min_score)
            self.log(f"{len(found)} crops at {cfg.data.detector}'s boxes "
                     f"({sum(s.label is None for s in found)} match no annotated hand)")
            crops += found
        if cfg.data.crops:
            found = folder_crops(cfg.data.crops, classes, keep_unknown=teacher is not None)
            self.log(f"{cfg.data.crops}: {found.summary()}")
            crops += found.samples
        soft = None
        if teacher:
            t0 = time.perf_counter()
            soft = teacher_targets(teacher, crops, self.spec, threads=1)
            self.log(f"teacher {teacher}: targets for {len(crops)} crops in {time.perf_counter() - t0:.0f} s")
        a = cfg.augment
        return CropDataset(crops, self.spec, train=True, seed=cfg.train.seed, jitter=a.jitter, hflip=a.hflip,
                           color=a.color, soft=soft)

    def _sampler(self) -> Sampler:
        """Shuffled; a crop set is also balanced (weight 1/sqrt(class count)): its folders hold ten times
        more crops of some gestures than of others. ``train.epoch_samples`` draws that many per epoch.
        Under ``torchrun`` each process takes its shard of the whole set."""
        seed, n = self.cfg.train.seed, self.cfg.train.epoch_samples
        if self.dist.enabled:
            return DistributedSampler(self.train_set, shuffle=True, seed=seed, drop_last=True)
        generator = torch.Generator().manual_seed(seed)
        if isinstance(self.train_set, CropDataset):
            labels = [s.label or "" for s in self.train_set.samples]
            counts = {c: labels.count(c) for c in set(labels)}
            weights = [counts[c] ** -0.5 for c in labels]
            return WeightedRandomSampler(weights, n or len(labels), replacement=True, generator=generator)
        return RandomSampler(self.train_set, num_samples=n, generator=generator)

    def _build_optimization(self) -> None:
        """Model on its device, optimizer, warm-up + cosine schedule, AMP scaler, EMA, best-so-far."""
        t = self.cfg.train
        self.model.to(self.device)
        if self.cuda and t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.steps_per_epoch = len(self.loader)
        total, warmup = t.epochs * self.steps_per_epoch, int(t.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, total, t.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and t.amp)
        self.ema = ModelEMA(self.model, t.ema) if t.ema else None
        self.start_epoch, self.history = 0, []
        self.best: dict[str, Any] = {"metric": -math.inf, "epoch": -1}

    def _wrap_for_devices(self) -> None:
        """``net`` is what the loop calls: the model, or its DDP wrapper (sync batch norm on GPUs)."""
        self.net: nn.Module = self.model
        if self.dist.enabled:
            if self.cuda:
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.cuda else None)

    def _open_writer(self) -> None:
        self.writer = None
        if self.dist.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.out / "tb"))

    # ---- helpers --------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.dist.main:
            tqdm.write(msg)

    @property
    def metric_name(self) -> str:
        if self.spec.task == "classifier":
            return "f1"
        return "hands/mAP50_95" if self.hands_only else "gestures/mAP50_95"

    def _resume(self) -> None:
        path = self.out / LAST
        if not path.is_file():
            raise HagridEdgeError(f"{path}: no checkpoint to resume from (run without --resume first)")
        payload = load_for_resume(path, self.model_cfg)
        self.model.load_state_dict(payload["model_state"])
        st = payload["train_state"]
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        if self.ema is not None and payload.get("ema_state"):
            self.ema.module.load_state_dict(payload["ema_state"])
            self.ema.updates = st.get("ema_updates", 0)
        self.start_epoch, self.history, self.best = payload["epoch"], payload["history"], st["best"]
        self.log(f"resumed from {path} after epoch {self.start_epoch}")

    def _save(self, epoch: int, improved: bool) -> None:
        train_state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                       "scaler": self.scaler.state_dict(), "best": self.best,
                       "ema_updates": self.ema.updates if self.ema else 0}
        kwargs = dict(model_cfg=self.model_cfg, spec=self.spec, model_state=self.model.state_dict(),
                      ema_state=self.ema.module.state_dict() if self.ema else None, epoch=epoch,
                      train_state=train_state, history=self.history, config=self.cfg.to_dict(),
                      provenance=self.provenance)
        save_checkpoint(self.out / LAST, **kwargs)
        if improved:
            save_checkpoint(self.out / BEST, **kwargs)

    # ---- training -------------------------------------------------------------------------------
    def _start_fake_quant(self, epoch: int) -> None:
        """From ``train.qat_epochs`` before the end on, the model trains with int8 rounding."""
        net = getattr(self.model, "net", self.model)  # an onnx_ssd's OnnxNet, or the classifier itself
        t = self.cfg.train
        if t.qat_epochs and epoch >= t.epochs - t.qat_epochs and net.quantizer is None:
            net.quantizer = FakeQuantizer(net.plan)
            self.log(f"epoch {epoch + 1}: int8 fake quantization on ({len(net.quantizer.quantized)} tensors)")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        t = self.cfg.train
        self._start_fake_quant(epoch)
        self.net.train()
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        raw = self.model
        sums: dict[str, float] = {}
        seen, t0 = 0, time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False,
                   disable=not (self.progress and self.dist.main))
        for images, targets in bar:
            x = normalize(images.to(self.device, non_blocking=True), self.spec)
            if self.cuda and t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            targets = [{k: v.to(self.device) for k, v in tg.items()} for tg in targets]
            with torch.autocast(self.device.type, enabled=self.cuda and t.amp):
                outputs = self.net(x)
                taught = None
                if self.teacher is not None:
                    with torch.no_grad():
                        taught = self.teacher(x)
            loss, parts = _step_loss(raw, outputs, targets, t.distill_alpha, taught)
            if not torch.isfinite(loss):
                raise HagridEdgeError(f"loss became {float(loss)} at epoch {epoch + 1}; lower train.lr "
                                      f"(now {t.lr}) or raise train.warmup_epochs")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if t.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            seen += len(images)
            parts["loss"] = float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            step = self.scheduler.last_epoch
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{lr:.4f}")
            if self.writer is not None and step % max(t.log_every, 1) == 0:
                self.writer.add_scalar("train/loss", parts["loss"], step)
                self.writer.add_scalar("train/lr", lr, step)
        n = max(len(self.loader), 1)
        stats = {k: distributed.mean(v / n, self.dist) for k, v in sums.items()}
        stats["images_per_s"] = distributed.mean(seen / (time.perf_counter() - t0), self.dist) * self.dist.world
        return stats

    def fit(self) -> dict[str, Any]:
        t = self.cfg.train
        stop = False
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        for epoch in range(self.start_epoch, t.epochs):
            stats = self.train_epoch(epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, **{f"train/{k}": round(v, 4) for k, v in stats.items()}}
            improved = False
            last = epoch + 1 == t.epochs
            if self.dist.main and self.val_samples and ((epoch + 1) % t.eval_every == 0 or last):
                model = self.ema.module if self.ema else self.model
                metrics = evaluate_model(model, self.spec, self.val_samples, self.hands_only, self.device)
                record.update(metrics)
                value = metrics[self.metric_name]
                if value > self.best["metric"] + t.min_delta:
                    self.best, improved = {"metric": value, "epoch": epoch + 1}, True
                if self.writer is not None:
                    for k, v in metrics.items():
                        self.writer.add_scalar(f"val/{k}", v, epoch + 1)
            if self.writer is not None:
                for k, v in stats.items():
                    self.writer.add_scalar(f"epoch/{k}", v, epoch + 1)
                self.writer.flush()
            self.history.append(record)
            if self.dist.main:
                self._save(epoch + 1, improved or not self.val_samples)
                self.log("  ".join(f"{k} {v}" for k, v in record.items()))
                if t.patience and self.val_samples and epoch + 1 - self.best["epoch"] >= t.patience:
                    self.log(f"early stop: no {self.metric_name} gain for {t.patience} epochs")
                    stop = True
            distributed.barrier(self.dist)
            if distributed.broadcast_flag(stop, self.dist):
                break
        if self.writer is not None:
            self.writer.close()
        return {"out_dir": str(self.out), "best": self.best, "history": self.history, "world_size": self.dist.world}

    def close(self) -> None:
        distributed.cleanup()
