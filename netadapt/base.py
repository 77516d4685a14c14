"""The base network a search starts from: given, or trained on first use and cached."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mobilenetv3 import MobileNetV3, NetSpec, build
from netadapt.cache import cache_dir
from netadapt.config import Config, to_dict
from netadapt.data import Dataset
from netadapt.devices import resolve_device
from netadapt.errors import ConfigError
from netadapt.checkpoint import load_checkpoint, save_checkpoint
from netadapt.train import base_spec, evaluate, train

__all__ = ["base_cache_key", "obtain_base_model"]


# TrainConfig fields that never reach the base network's training: evaluation and
# threads, and the fine-tunes' own settings (a new fine-tune setting must not retrain the base).
_NOT_BASE_TRAINING = ("eval_batch_size", "threads", "finetune_lr", "distill_alpha", "distill_temperature")
_PLACEMENT = ("device", "precision", "deterministic")  # (see base_cache_key)
# DataConfig fields that change how images are held, not which images or how they look.
_NOT_BASE_DATA = ("cache", "workers", "memory_budget_gb")


def base_cache_key(config: Config, spec: NetSpec, holdout_images: int) -> str:
    """Everything that changes the trained base weights, and nothing else.

    `holdout_images` is the holdout's resolved size, so `data.holdout: null` and
    the number it resolves to share one cached network.
    """
    relevant = {
        "spec": spec.to_dict(),
        "data": {k: v for k, v in {**to_dict(config.data), "holdout": holdout_images}.items()
                 if k not in _NOT_BASE_DATA},
        "train": {k: v for k, v in to_dict(config.train).items() if k not in _NOT_BASE_TRAINING + _PLACEMENT},
        "seed": config.seed,
        # Version 2: the initial weights are seeded by config.seed (build(spec, seed)), no longer drawn
        # from whatever state the process's generator was in; bases cached before are not reused.
        "init": 2,
    }
    # Where it trains changes float summation, so a GPU or a lower precision is a
    # key of its own; the CPU in fp32 adds nothing, keeping keys cached before.
    placement = (resolve_device(config.train.device).type, config.train.precision)
    if placement != ("cpu", "fp32"):
        relevant["placement"] = list(placement)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def obtain_base_model(config: Config, dataset: Dataset, progress: bool = True, log=print) -> tuple[MobileNetV3, Path]:
    """Load `model.checkpoint`, or train the base network once and cache it.

    Returns:
        The model and the checkpoint file it came from.
    """
    if config.model.checkpoint is not None:
        path = Path(config.model.checkpoint)
        model = load_checkpoint(path)
        if model.spec.in_channels != dataset.in_channels or model.spec.num_classes != dataset.num_classes:
            raise ConfigError(
                f"model.checkpoint: {path} expects {model.spec.in_channels} input channels and "
                f"{model.spec.num_classes} classes, but the data has {dataset.in_channels} and {dataset.num_classes}"
            )
        return model, path
    spec = base_spec(config.model, dataset)
    path = cache_dir() / "base" / f"{spec.name or 'spec'}-{base_cache_key(config, spec, len(dataset.holdout))}.pt"
    if path.is_file():
        log(f"base network: cached {path}")
        return load_checkpoint(path), path
    log(f"base network: training {spec.name or 'spec'} for {config.train.steps} steps (cached for later runs)")
    model = build(spec, seed=config.seed)
    stats = train(model, dataset.train, config.train, config.train.steps, config.seed, progress=progress)
    accuracy = evaluate(model, dataset.holdout, config.train.eval_batch_size,
                        device=config.train.device, precision=config.train.precision)
    log(f"base network: trained in {stats.seconds:.0f} s ({stats.images_per_second:.0f} images/s), "
        f"holdout accuracy {accuracy:.2%}")
    save_checkpoint(path, model)
    return model, path
