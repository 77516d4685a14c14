"""Training stage: train a base network, fine-tune candidates, evaluate, checkpoint.

The search calls `finetune` and `evaluate` many times, so both run on
in-memory `Split` tensors (see `netadapt.data`): a step indexes a random batch,
optionally crops and flips it on the tensor, and runs forward/backward.

Determinism: a `torch.Generator` seeded from `seed` drives batch sampling and
augmentation, and `torch.manual_seed(seed)` is set before the first step (for
dropout). On CPU, a fixed seed *and a fixed thread count* give bit-identical
weights; a different thread count may change float summation order. On CUDA,
see `netadapt.devices` and `train.deterministic`.

Devices: every function here runs on `train.device` (`resolve_device`) in
`train.precision`, and gives the model back on the device it came in on, so
callers, surgery and checkpoints only ever see CPU weights.

Checkpoints are written and read by `netadapt.checkpoint`.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mobilenetv3 import MobileNetV3, NetSpec, build, preset
from netadapt.checkpoint import save_checkpoint
from netadapt.io import atomic_write_text, load_spec
from netadapt.config import Config, ModelConfig, TrainConfig
from netadapt.data import Dataset, Split, load_dataset
from netadapt.devices import autocast, deterministic_algorithms, grad_scaler, resolve_device
from netadapt.errors import ConfigError, NetadaptError, RunDirError, quote

__all__ = [
    "BaseTraining",
    "TrainStats",
    "TrainingDiverged",
    "base_spec",
    "model_spec",
    "Scores",
    "distillation_loss",
    "evaluate",
    "evaluate_scores",
    "finetune",
    "long_finetune",
    "recalibrate_batchnorm",
    "torch_threads",
    "train",
    "train_base",
]

class TrainingDiverged(NetadaptError):
    """The loss became NaN or infinite; the message gives the step and the learning rate."""


@dataclass(frozen=True)
class TrainStats:
    """What one `train` or `finetune` call did and how fast."""

    steps: int
    images: int  # images seen (steps x batch)
    seconds: float  # wall time of the whole loop
    images_per_second: float
    data_seconds: float  # time spent sampling and augmenting batches (part of `seconds`)
    final_loss: float  # mean training loss over the last min(50, steps) steps

    @property
    def data_share(self) -> float:
        """Fraction of the wall time spent on data; should stay well under 10%."""
        return self.data_seconds / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------ training
def train(
    model: MobileNetV3,
    split: Split,
    config: TrainConfig,
    steps: int,
    seed: int,
    progress: bool = True,
    teacher: torch.nn.Module | None = None,
) -> TrainStats:
    """Train `model` in place: SGD with Nesterov momentum, warmup then cosine decay.

    Args:
        model: the network; trained in float32 in train mode.
        split: the training images (normally `Dataset.train`).
        config: batch size, peak LR, momentum, weight decay, label smoothing,
            augmentation and threads.
        steps: optimiser steps.
        seed: seeds batch sampling, augmentation and dropout.
        progress: show a tqdm bar.
        teacher: distil from this network when `config.distill_alpha` > 0 (see `finetune`).

    Returns:
        Steps, images, wall time, images/s, data-loading time and final loss.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    warmup = min(steps - 1, max(1, round(config.warmup * steps))) if steps > 1 else 0

    def schedule(step: int) -> float:
        if step < warmup:  # linear warmup: large LRs on a fresh BN network otherwise blow up
            return config.lr * (step + 1) / warmup
        progress_ = (step - warmup) / max(1, steps - warmup)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress_))

    return _run(model, split, config, steps, seed, schedule, progress, "train",
                teacher if config.distill_alpha > 0 else None)


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - alpha) * cross-entropy + alpha * T^2 * KL(teacher || student), both softened at T (Hinton et al.).

    T^2 keeps the soft term's gradients on the scale of the hard one's as T
    changes. alpha 0 is the plain (label-smoothed) cross-entropy.
    """
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


def finetune(
    model: MobileNetV3,
    split: Split,
    steps: int,
    config: TrainConfig,
    seed: int,
    progress: bool = False,
    teacher: torch.nn.Module | None = None,
) -> TrainStats:
    """NetAdapt's short-term fine-tune: `steps` steps at the constant `config.finetune_lr`.

    Same machinery as `train` (sampling, augmentation, determinism), without a
    schedule: a few dozen steps are too few for warmup or decay to matter.
    With a `teacher` (the base network) and `config.distill_alpha` > 0, the
    loss is `distillation_loss` against the teacher's logits on the same
    augmented images: a pruned network recovers towards what the base knew.

    Args:
        model: the candidate network, trained in place.
        split: the training images (never the holdout or test split).
        steps: optimiser steps; 0 returns at once.
        config: batch size, `finetune_lr`, momentum, weight decay, augmentation.
        seed: seeds batch sampling, augmentation and dropout.
        progress: show a tqdm bar (off by default: the search shows its own).
        teacher: the network to distil from; used only when `config.distill_alpha` > 0.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    return _run(model, split, config, steps, seed, lambda step: config.finetune_lr, progress, "finetune",
                teacher if config.distill_alpha > 0 else None)


def long_finetune(
    model: MobileNetV3,
    split: Split,
    steps: int,
    config: TrainConfig,
    seed: int,
    progress: bool = True,
    teacher: torch.nn.Module | None = None,
) -> TrainStats:
    """NetAdapt's long-term fine-tune, after the search or before a family export; the model is left in eval mode.

    `train`'s warmup and cosine schedule, peaking at `config.finetune_lr`: the
    network is already trained, so the base's peak LR would undo it. With a
    `teacher` and `config.distill_alpha` > 0 it distils as `finetune` does.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    stats = train(model, split, replace(config, lr=config.finetune_lr), steps, seed, progress=progress, teacher=teacher)
    model.eval()
    return stats


@dataclass(frozen=True)
class Scores:
    """How well a network classifies a split: top-1 accuracy in [0, 1] and mean cross-entropy (nats)."""

    accuracy: float
    loss: float


@torch.no_grad()
def evaluate_scores(model: MobileNetV3, split: Split, batch_size: int = 512, progress: bool = False,
                    device: str = "cpu", precision: str = "fp32") -> Scores:
    """Top-1 accuracy and mean cross-entropy of `model` on `split`, in one pass.

    The loss is a smoother score than accuracy on a small holdout: it moves
    with every image's confidence, not only with the ones that flip. Runs in
    eval mode without gradients and restores the model's previous mode.

    Args:
        model: the network.
        split: the images to classify (holdout for decisions, test for reports).
        batch_size: images per forward pass.
        progress: show a tqdm bar.
        device: a `train.device` name; the model comes back where it was.
        precision: a `train.precision`; the loss is summed in float32 either way.
    """
    if len(split) == 0:
        raise ValueError("evaluate() needs a non-empty split")
    was_training = model.training
    target = resolve_device(device)
    home = _device_of(model)
    model.eval().to(target)
    correct, loss = 0, 0.0
    try:
        index = [slice(start, start + batch_size) for start in range(0, len(split), batch_size)]
        images = split.batches(index, pin_memory=target.type == "cuda")
        for batch, part in tqdm(zip(images, index), total=len(index), desc="evaluate", unit="batch",
                                disable=not progress, leave=False):
            labels = split.labels[part].to(target)
            with autocast(target, precision):
                logits = model(_to_device(batch, target)).float()
            correct += int((logits.argmax(dim=1) == labels).sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
    finally:
        model.train(was_training).to(home)
    return Scores(accuracy=correct / len(split), loss=loss / len(split))


def evaluate(model: MobileNetV3, split: Split, batch_size: int = 512, progress: bool = False,
             device: str = "cpu", precision: str = "fp32") -> float:
    """Top-1 accuracy of `model` on `split`, in [0, 1] (`evaluate_scores(...).accuracy`)."""
    return evaluate_scores(model, split, batch_size, progress, device, precision).accuracy


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; to CUDA through pinned memory, so the copy runs asynchronously."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _run(
    model: MobileNetV3,
    split: Split,
    config: TrainConfig,
    steps: int,
    seed: int,
    lr_at: Callable[[int], float],
    progress: bool,
    description: str,
    teacher: torch.nn.Module | None = None,
) -> TrainStats:
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if len(split) < 2:
        raise ValueError(f"training needs at least 2 images (BatchNorm), the split has {len(split)}")
    batch_size = min(config.batch_size, len(split))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator
    decay, no_decay = [], []
    for parameter in model.parameters():
        # No weight decay on BN scales/shifts and biases (1-d tensors): decaying
        # them only fights the normalisation.
        (decay if parameter.dim() > 1 else no_decay).append(parameter)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr_at(0) if steps else 0.0,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
    )
    device = resolve_device(config.device)
    batches = _batches(split, batch_size, generator, config.crop_padding, config.flip, device.type == "cuda")
    recent: list[float] = []
    data_seconds = 0.0
    home = _device_of(model)
    scaler = grad_scaler(device, config.precision)
    model.train().to(device)
    if teacher is not None:
        teacher.eval().to(device)  # its running BatchNorm statistics, no dropout
    with torch_threads(config.threads), deterministic_algorithms(config.deterministic):
        start = time.perf_counter()
        bar = tqdm(total=steps, desc=description, unit="step", disable=not progress, leave=progress)
        try:
            for step in range(steps):
                lr = lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                data_start = time.perf_counter()
                images, labels = next(batches)
                images, labels = _to_device(images, device), labels.to(device)
                data_seconds += time.perf_counter() - data_start
                with autocast(device, config.precision):
                    logits = model(images).float()  # the loss in float32 whatever the precision
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits = teacher(images).float()
                if teacher is None:
                    loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
                else:
                    loss = distillation_loss(logits, teacher_logits, labels, config.distill_alpha,
                                             config.distill_temperature, config.label_smoothing)
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"{description} diverged at step {step + 1} of {steps}: loss is {value} at lr {lr:g}; "
                        f"lower train.{'lr' if description == 'train' else 'finetune_lr'}"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # the scaler passes through unless precision is fp16
                scaler.step(optimizer)
                scaler.update()
                recent = (recent + [value])[-50:]
                bar.update(1)
                if progress and step % 10 == 0:
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(loss=f"{value:.3f}", img_s=f"{(step + 1) * batch_size / elapsed:.0f}")
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if steps and config.bn_recalibration > 0:
            recalibrate_batchnorm(model, split, config.bn_recalibration, config.eval_batch_size,
                                  device=config.device, precision=config.precision)
    model.to(home)
    if teacher is not None:
        teacher.to(home)
    images_seen = steps * batch_size
    return TrainStats(
        steps=steps,
        images=images_seen,
        seconds=seconds,
        images_per_second=images_seen / seconds if seconds > 0 else 0.0,
        data_seconds=data_seconds,
        final_loss=sum(recent) / len(recent) if recent else float("nan"),
    )


@torch.no_grad()
def recalibrate_batchnorm(model: MobileNetV3, split: Split, images: int = 1024, batch_size: int = 512,
                          seed: int = 0, device: str = "cpu", precision: str = "fp32") -> None:
    """Recompute every BatchNorm's running mean and variance on `images` images of `split`, drawn at random.

    With MobileNetV3's BN momentum of 0.01 the running statistics trail the
    weights by ~100 steps, so a short run (a NetAdapt fine-tune of a few dozen
    steps after surgery changed a layer's inputs) is evaluated with stale
    statistics. An exact average over a few batches fixes that for the cost of
    a few forward passes (as OFA does for its sub-networks). The images are a
    seeded random subset, not the first ones: a `folder` data set is sorted by
    class, so its first thousand images are one or two classes. Deterministic
    for a seed, and every candidate recalibrates on the same images; no
    augmentation; dropout is active but does not reach any BN.

    Args:
        model: the network, updated in place; left in train mode.
        split: the training images.
        images: how many images to average over.
        batch_size: images per forward pass.
        seed: draws the subset.
        device: a `train.device` name; the model comes back where it was.
        precision: a `train.precision`.
    """
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None: cumulative average over the batches seen
    target = resolve_device(device)
    home = _device_of(model)
    model.train().to(target)
    try:
        chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[: min(images, len(split))]
        chosen = chosen.sort().values  # the same images in storage order: memory-friendly gathers
        index = [chosen[start : start + batch_size] for start in range(0, len(chosen), batch_size)]
        for batch in split.batches(index, pin_memory=target.type == "cuda"):
            with autocast(target, precision):
                model(_to_device(batch, target))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.to(home)


@dataclass(frozen=True)
class _BatchPlan:
    """One training batch, drawn before its images are read: which images, and how each is augmented."""

    index: torch.Tensor
    offsets: tuple[torch.Tensor, torch.Tensor] | None  # crop offsets (dy, dx) per image, or no crop
    mirrored: torch.Tensor | None  # which images are flipped, or no flips
    padding: int

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        if self.offsets is not None:
            images = _random_crop(images, self.padding, *self.offsets)
        if self.mirrored is not None:
            images = torch.where(self.mirrored.view(-1, 1, 1, 1), images.flip(3), images)
        return images


def _plans(count: int, batch_size: int, generator: torch.Generator, padding: int, flip: bool) -> Iterator[_BatchPlan]:
    """Endless batch plans: shuffled without replacement within an epoch, the ragged tail dropped.

    Every draw comes from `generator`, in the same order whether the images
    are in memory or streamed, so both give the same batches.
    """
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            offsets = None
            if padding > 0:
                offsets = (torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator),
                           torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator))
            mirrored = torch.rand(batch_size, generator=generator) < 0.5 if flip else None
            yield _BatchPlan(order[start : start + batch_size], offsets, mirrored, padding)


def _batches(
    split: Split, batch_size: int, generator: torch.Generator, padding: int, flip: bool, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless augmented training batches (images, labels) of `split`, as `_plans` draws them."""
    pending: deque[_BatchPlan] = deque()

    def indices() -> Iterator[torch.Tensor]:
        # Read ahead of what has been yielded when streamed: the plans wait here, in order.
        for plan in _plans(len(split), batch_size, generator, padding, flip):
            pending.append(plan)
            yield plan.index

    for images in split.batches(indices(), pin_memory=pin_memory and split.streamed):
        plan = pending.popleft()
        yield plan.augment(images), split.labels[plan.index]


def _random_crop(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Crop after zero padding (zero = the normalised mean), at offset (dy[i], dx[i]) for image i."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (dy.view(n, 1) + torch.arange(height)).view(n, 1, height, 1)
    cols = (dx.view(n, 1) + torch.arange(width)).view(n, 1, 1, width)
    batch = torch.arange(n).view(n, 1, 1, 1)
    channels = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Use `threads` intra-op threads inside the block (0: leave torch's setting), then restore."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------ base network
@dataclass(frozen=True, eq=False)
class BaseTraining:
    """The result of `train_base`: the trained model and where it was written."""

    model: MobileNetV3
    stats: TrainStats
    holdout_accuracy: float
    test_accuracy: float
    out_dir: Path
    metrics: dict


def base_spec(model_config: ModelConfig, dataset: Dataset) -> NetSpec:
    """The base network's spec: a preset/width or a spec file, with classes and channels from the data.

    Raises:
        ConfigError: the spec file is missing or invalid, or the width is not positive.
    """
    return model_spec(model_config, dataset.in_channels, dataset.num_classes)


def model_spec(model_config: ModelConfig, in_channels: int, num_classes: int | None) -> NetSpec:
    """The spec `model_config` names, for inputs of `in_channels` and `num_classes` outputs.

    A spec file keeps its own class count when `num_classes` is None; its
    stem always takes `in_channels`, as the data (or input shape) decides it.

    Raises:
        ConfigError: the spec file is missing or invalid, the width is not
            positive or the class count is below 1.
    """
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"the class count must be >= 1, got {num_classes}")
    if model_config.spec:
        spec = load_spec(model_config.spec, "model.spec")
        try:
            return spec.replace(in_channels=in_channels,
                                num_classes=spec.num_classes if num_classes is None else num_classes)
        except ValueError as error:  # the data's channels or classes past the spec's bounds
            raise ConfigError(f"model.spec {model_config.spec}: {error}") from None
    if not (isinstance(model_config.width, (int, float)) and math.isfinite(model_config.width) and model_config.width > 0):
        raise ConfigError(f"model.width must be a finite number > 0, got {quote(model_config.width)}")
    try:
        return preset(model_config.preset, width=model_config.width, num_classes=num_classes or 1000,
                      in_channels=in_channels)
    except ValueError as error:  # a width whose channels pass the spec's bounds
        raise ConfigError(f"model.width {quote(model_config.width)}: {error}") from None


def train_base(
    config: Config,
    out_dir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BaseTraining:
    """Train the base network from `config` and write its run directory.

    Writes `base.pt` (checkpoint), `spec.yaml`, `config.yaml` (resolved) and
    `metrics.json` under `out_dir`. Holdout and test accuracy are both
    reported; NetAdapt later decides on the holdout only.

    Args:
        config: the whole config (model, data, train sections and the seed).
        out_dir: the run directory; must not already hold a `base.pt`.
        progress: show tqdm bars.
        log: where progress lines go.

    Raises:
        RunDirError: `out_dir` already holds a checkpoint.
        DataError, ConfigError, TrainingDiverged: see `load_dataset` and `train`.
    """
    out_dir = Path(out_dir)
    if (out_dir / "base.pt").exists():
        raise RunDirError(f"{out_dir / 'base.pt'} already exists; choose another --out or remove it")
    resolve_device(config.train.device)  # a GPU this machine lacks is refused before the data loads
    load_start = time.perf_counter()
    dataset = load_dataset(config.data)
    load_seconds = time.perf_counter() - load_start
    spec = base_spec(config.model, dataset)
    log(f"data: {dataset.summary()} (loaded in {load_seconds:.1f} s)")
    model = build(spec, seed=config.seed)
    log(f"model: {spec.name or config.model.spec}, {model.num_params():,} parameters")
    stats = train(model, dataset.train, config.train, config.train.steps, config.seed, progress=progress)
    log(
        f"trained {stats.steps} steps in {stats.seconds:.1f} s: {stats.images_per_second:.0f} images/s, "
        f"data loading {100 * stats.data_share:.1f}% of the time, final loss {stats.final_loss:.3f}"
    )
    with torch_threads(config.train.threads):
        holdout = evaluate(model, dataset.holdout, config.train.eval_batch_size, device=config.train.device,
                           precision=config.train.precision)
        test = evaluate(model, dataset.test, config.train.eval_batch_size, progress=progress,
                        device=config.train.device, precision=config.train.precision)
    log(f"accuracy: holdout {100 * holdout:.2f}%, test {100 * test:.2f}%")
    metrics = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset.source,
        "model": spec.name,
        "parameters": model.num_params(),
        "steps": stats.steps,
        "images": stats.images,
        "train_seconds": round(stats.seconds, 2),
        "images_per_second": round(stats.images_per_second, 1),
        "data_share": round(stats.data_share, 4),
        "final_loss": round(stats.final_loss, 4),
        "holdout_accuracy": holdout,
        "test_accuracy": test,
        "threads": config.train.threads or torch.get_num_threads(),
        "torch": torch.__version__,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "spec.yaml", spec.to_yaml())
    atomic_write_text(out_dir / "config.yaml", config.to_yaml())
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    save_checkpoint(out_dir / "base.pt", model)  # last: its presence marks a complete directory
    return BaseTraining(model, stats, holdout, test, out_dir, metrics)
