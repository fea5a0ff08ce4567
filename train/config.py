"""Training configuration: a YAML file of four sections, checked key by key.

Every unknown or mistyped key is an error naming it (``train.lr: expected a number, got 'x'``), so a
typo never silently falls back to a default. Relative paths in the file are resolved against the
current directory (the repository root in the shipped scripts).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.models import MODEL_NAMES, ONNX_MODELS, ModelConfig, default_classes, onnx_model, task_of
from hagrid_edge.spec import CROP_KINDS


class ConfigError(HagridEdgeError):
    """A training config key is missing, unknown or has a bad value."""


@dataclass
class ModelSection:
    name: str = "ssdlite320_mobilenet_v3_large"
    mode: str = "gestures"  # detectors: gestures (18 + no_gesture) or hands (one class)
    classes: list[str] | None = None  # default: by task and mode
    init: str | None = None  # local checkpoint (ours or the HaGRID authors') or ONNX file (onnx_*) to start from
    input_size: list[int] | None = None  # [h, w]; default 320x320 (detectors), 224x224 (classifiers)
    mean: list[float] | None = None  # pixel units; default (127.5,)*3 detectors, ImageNet classifiers
    std: list[float] | None = None
    pad_value: int = 114
    crop: str | None = None  # hand-crop classifiers: square (the box grown to a square) or box; default: init's
    mirror: bool = False  # hand-crop classifiers: once trained, answer the mean over the crop and its mirror


@dataclass
class DataSection:
    root: str = "../shared/data/hagrid512-mini"
    train_split: str = "train"
    val_split: str | None = "val"
    crops: str | None = None  # hand-crop classifiers: a crop folder (<part>/<class>/<image>) added to the split's hands
    detector: str | None = None  # hand-crop classifiers: also crops at this hand detector's boxes on the train photos
    detector_min_score: float = 0.3
    targets: list[str] | None = None  # gesture files to use (default: all)
    workers: int = 2
    limit: int | None = None  # first N training samples (smoke runs)
    val_limit: int | None = None


@dataclass
class AugmentSection:
    hflip: float = 0.5
    crop: float = 0.5
    min_crop: float = 0.4
    color: float = 0.3
    jitter: float = 0.1  # hand-crop classifiers: box corners moved by up to this share of the box size


@dataclass
class TrainSection:
    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.02  # cosine ends at lr * min_lr_ratio
    grad_clip: float | None = 10.0
    ema: float | None = None  # EMA decay, e.g. 0.999 (None: off)
    amp: bool = True  # on CUDA only
    channels_last: bool = True  # on CUDA only
    eval_every: int = 1
    epoch_samples: int | None = None  # samples drawn per epoch (default: the train set's size)
    patience: int | None = None  # early stopping: epochs without improvement of the val metric
    min_delta: float = 0.0
    seed: int = 0
    # Hand-crop classifiers: distil from this classifier (ONNX) at each crop's box; onnx_ssd detectors:
    # learn hand probability and boxes from this single-class hand detector (raw heads, same anchors).
    teacher: str | None = None
    # Classifiers: weight of the teacher's KL, the rest is cross-entropy on labelled crops;
    # detectors: weight of the teacher's terms added to the SSD loss.
    distill_alpha: float = 0.5
    # The last N epochs (all, when fewer) train with int8 fake quantization (train/fake_quant.py; onnx_ssd
    # and onnx_classifier models), so the INT8 form holds where post-training quantization alone cannot.
    qat_epochs: int = 0
    log_every: int = 10  # TensorBoard scalars every N steps


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    train: TrainSection = field(default_factory=TrainSection)

    @property
    def task(self) -> str:
        return task_of(self.model.name)

    @property
    def classes(self) -> list[str]:
        """``model.classes``, or the default of the model's task and mode."""
        return list(self.model.classes) if self.model.classes else default_classes(self.model.name, self.model.mode)

    def model_config(self) -> ModelConfig:
        m = self.model
        if m.name in ONNX_MODELS:  # the input contract and layers come from the ONNX file
            return onnx_model(m.name, m.init or "", self.classes, m.crop, m.mirror)[1]
        detector = self.task == "detector"
        imagenet_mean, imagenet_std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
        return ModelConfig(
            name=m.name,
            classes=self.classes,
            input_size=tuple(m.input_size or ((320, 320) if detector else (224, 224))),
            mean=tuple(m.mean or ((127.5,) * 3 if detector else imagenet_mean)),
            std=tuple(m.std or ((127.5,) * 3 if detector else imagenet_std)),
            pad_value=m.pad_value,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - a bug in this module


def _section(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)

    def key(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    if unknown:
        raise ConfigError(f"{key(unknown[0])}: unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _section(hints[name], value, key(name))
        else:
            values[name] = _check_type(value, hints[name], key(name))
    return cls(**values)


def validate(cfg: TrainConfig) -> TrainConfig:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {what}")

    need(cfg.model.name in MODEL_NAMES, "model.name", f"unknown model {cfg.model.name!r} (known: {', '.join(MODEL_NAMES)})")
    if cfg.model.name in ONNX_MODELS:
        need(cfg.model.init is not None, "model.init", f"{cfg.model.name} takes its layers from an ONNX file; name one")
        need(Path(cfg.model.init).is_file(), "model.init", f"{cfg.model.init}: no such ONNX file")
    if cfg.model.init is not None and cfg.model.name not in ONNX_MODELS:
        need(not cfg.model.init.lower().endswith(".onnx"), "model.init",
             f"{cfg.model.init} is ONNX: an ONNX file gives its layers and weights to "
             f"{' or '.join(ONNX_MODELS)}; {cfg.model.name} starts from a PyTorch checkpoint")
    need(cfg.model.crop in (None, *CROP_KINDS), "model.crop", f"must be one of {', '.join(CROP_KINDS)}")
    need(cfg.model.crop is None or cfg.model.name == "onnx_classifier", "model.crop",
         "only hand-crop classifiers (onnx_classifier) take a crop")
    need(not cfg.model.mirror or cfg.model.name == "onnx_classifier", "model.mirror",
         "only hand-crop classifiers (onnx_classifier) answer for a mirror image")
    need(cfg.data.crops is None or Path(cfg.data.crops).is_dir(), "data.crops", f"{cfg.data.crops}: no such folder")
    crop_model = cfg.model.name == "onnx_classifier"
    need(cfg.data.detector is None or crop_model, "data.detector", "only hand-crop classifiers (onnx_classifier) take one")
    need(cfg.train.teacher is None or cfg.model.name in ONNX_MODELS, "train.teacher",
         "only hand-crop classifiers (onnx_classifier) and onnx_ssd detectors take one")
    for key, path in (("data.detector", cfg.data.detector), ("train.teacher", cfg.train.teacher)):
        need(path is None or Path(path).is_file(), key, f"{path}: no such model file")
    need(0 <= cfg.train.distill_alpha <= 1, "train.distill_alpha", "must be in [0, 1]")
    need(cfg.train.qat_epochs >= 0, "train.qat_epochs", "must be >= 0")
    need(cfg.train.qat_epochs == 0 or cfg.model.name in ONNX_MODELS, "train.qat_epochs",
         f"fake quantization runs on {' and '.join(ONNX_MODELS)} models only")
    need(0 <= cfg.augment.jitter < 0.5, "augment.jitter", "must be in [0, 0.5)")
    need(cfg.model.mode in ("gestures", "hands"), "model.mode", f"must be gestures or hands, got {cfg.model.mode!r}")
    mc = cfg.model_config()
    need(len(mc.input_size) == 2 and min(mc.input_size) > 0, "model.input_size", "must be [height, width] > 0")
    need(len(mc.mean) == 3 and len(mc.std) == 3 and min(mc.std) > 0, "model.mean/std", "need 3 values, std > 0")
    t = cfg.train
    need(t.epochs > 0, "train.epochs", "must be positive")
    need(t.batch_size > 0, "train.batch_size", "must be positive")
    need(t.optimizer in ("sgd", "adamw"), "train.optimizer", f"must be sgd or adamw, got {t.optimizer!r}")
    need(t.lr > 0, "train.lr", "must be positive")
    need(t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
    need(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
    need(t.ema is None or 0 < t.ema < 1, "train.ema", "must be a decay in (0, 1) or null")
    need(t.eval_every >= 0, "train.eval_every", "must be >= 0 (0: no evaluation)")
    need(t.epoch_samples is None or t.epoch_samples > 0, "train.epoch_samples", "must be positive or null")
    need(cfg.data.workers >= 0, "data.workers", "must be >= 0")
    a = cfg.augment
    need(all(0 <= p <= 1 for p in (a.hflip, a.crop)), "augment.hflip/crop", "probabilities must be in [0, 1]")
    need(0 < a.min_crop <= 1, "augment.min_crop", "must be in (0, 1]")
    if cfg.model.init is not None:
        need(Path(cfg.model.init).is_file(), "model.init", f"{cfg.model.init}: no such checkpoint")
    return cfg


def from_dict(data: Any, source: str = "config") -> TrainConfig:
    try:
        return validate(_section(TrainConfig, data, ""))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config in ``path`` with ``overrides`` (``"train.epochs"``, ``"out_dir"``: value; None is
    left alone) applied before it is checked, so an override replaces a path the file names that does
    not exist on this machine."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    for dotted, value in (overrides or {}).items():
        if value is None or not isinstance(data, dict):
            continue
        section, _, key = dotted.rpartition(".")
        target = data.setdefault(section, {}) if section else data
        if isinstance(target, dict):
            target[key] = value
    return from_dict(data, str(path))
