"""Export the Pareto family of a search run.

Every iteration's winner is a network with lower latency than the one
before. The family is decided after the final training, not on search-time
figures: every network of the run gets the long fine-tune (if asked), then
all of them are re-measured side by side, in the same interleaved passes,
and the family is the subset that is Pareto-optimal in (that latency,
holdout accuracy after the final training). Search-time figures are
noisier (each was measured alone, at a different moment) and the search's
holdout scores are biased upwards, each the best of several noisy ones.
Test accuracy is measured at export and only reported.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch

from mobilenetv3 import MobileNetV3, count
from netadapt.io import atomic_write_bytes, atomic_write_text
from netadapt.config import Config, load_config
from netadapt.data import Dataset, load_dataset
from netadapt.benchmark import best_of, measure_onnx_passes
from netadapt.errors import RunDirError
from netadapt.measurers import make_measurer
from netadapt.onnx_export import onnx_bytes
from netadapt.rundir import RunDir
from netadapt.checkpoint import load_checkpoint, save_checkpoint
from netadapt.devices import resolve_device
from netadapt.train import evaluate, long_finetune

__all__ = ["FAMILY_COLUMNS", "Member", "export_family", "member_name", "pareto_front", "run_members"]

FAMILY_COLUMNS = [
    "name",
    "iteration",
    "search_ms",  # whole-model latency measured during the search
    "export_ms",  # re-measured at export, same target settings
    "predicted_ms",
    "holdout_acc",
    "test_acc",
    "search_holdout_acc",  # before --long-finetune (equal to holdout_acc without it)
    "search_test_acc",
    "long_finetune_steps",
    "params",
    "macs",
    "max_abs_diff",  # onnxruntime vs torch logits on test images
    "path",
]


@dataclass(frozen=True)
class Member:
    """One network of a run: the base (iteration 0) or an iteration's winner."""

    iteration: int
    measured_ms: float
    predicted_ms: float
    holdout_acc: float
    test_acc: float
    checkpoint: Path


def run_members(run: RunDir) -> list[Member]:
    """Every committed network of the run, in iteration order.

    Raises:
        RunDirError: nothing is committed yet, the history is malformed, a
            committed row lacks a figure, or its checkpoint is missing or
            outside the run directory (see `RunDir.checkpoint_file`).
    """
    state = run.read_state()
    if state is None:
        raise RunDirError(f"{run.path}: the run has no committed iteration yet")
    history = run.read_history()
    rows = history[history["kind"].isin(["base", "iteration"])]
    rows = rows[rows["iteration"].astype(int) <= state.iteration]
    members = []
    for row in rows.itertuples():
        members.append(
            Member(int(row.iteration), run.committed_number(row, "measured_ms"), run.committed_number(row, "predicted_ms"),
                   run.committed_number(row, "holdout_acc"),
                   float(row.test_acc) if not pd.isna(row.test_acc) else math.nan, run.checkpoint_file(row))
        )
    return members


def pareto_front(points: list[Any], latency: Callable[[Any], float], accuracy: Callable[[Any], float]) -> list[Any]:
    """The points no other point dominates (lower-or-equal latency and higher-or-equal
    accuracy, one of them strictly), sorted by latency.

    Of exact duplicates in both figures only the first is kept.
    """
    ordered = sorted(points, key=lambda p: (latency(p), -accuracy(p)))
    front: list[Any] = []
    best_accuracy = -math.inf
    for point in ordered:
        if accuracy(point) > best_accuracy:
            front.append(point)
            best_accuracy = accuracy(point)
    return front


def member_name(rank: int, latency_ms: float, accuracy: float) -> str:
    """A name that sorts and reads as a menu: 01-0.412ms-acc87.3."""
    return f"{rank:02d}-{latency_ms:.3f}ms-acc{accuracy * 100:.1f}"


def _max_abs_diff(model: MobileNetV3, data: bytes, images: torch.Tensor) -> float:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    differences = []
    with torch.no_grad():
        for image in images:
            batch = image.unsqueeze(0)
            expected = model(batch).numpy()
            actual = session.run(None, {name: batch.numpy()})[0]
            differences.append(float(np.abs(actual - expected).max()))
    return max(differences)


def export_family(
    run_path: str | Path,
    out: str | Path,
    long_finetune_steps: int = 0,
    dataset: Dataset | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    confirm_target: str | None = None,
) -> pd.DataFrame:
    """Write each Pareto member's model.onnx, spec.yaml and weights.pt, and family.csv.

    Every network of the run is trained (if asked) and re-measured side by
    side first; the front is chosen on those figures (module docstring).

    Args:
        run_path: the search's run directory.
        out: the family directory.
        long_finetune_steps: fine-tune every network of the run this many steps first
            (learning rate `train.finetune_lr`, cosine decay, distilling from the base
            when `train.distill_alpha` > 0); 0 exports as searched.
        dataset: preloaded data (default: loaded from the run's config).
        confirm_target: the device the caller confirms; a run whose config.yaml
            measures on a remote device is refused without it (`RunDir.confirm_target`).
    Returns:
        The family table, one row per member, as written to family.csv.
    """
    run = RunDir(run_path)
    run.require_existing()
    config: Config = load_config(run.config_path)
    run.confirm_target(config.target.device, config.target.token_file, confirm_target)
    if long_finetune_steps > 0:
        resolve_device(config.train.device)  # a GPU this machine lacks is refused before any work
    members = run_members(run)
    dataset = dataset or load_dataset(config.data)
    shape = config.input_shape()
    measurer = make_measurer(config.target, config.measure, shape)
    fingerprint = measurer.fingerprint()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_images = dataset.test.images[:8]
    teacher = None
    if long_finetune_steps > 0 and config.train.distill_alpha > 0:
        teacher = load_checkpoint(members[0].checkpoint).eval()  # the base network
    rows, trained = [], []  # family.csv fields, and each network's model and ONNX bytes
    for member in members:
        model = load_checkpoint(member.checkpoint).eval()
        search_holdout = member.holdout_acc
        search_test = evaluate(model, dataset.test, config.train.eval_batch_size, device=config.train.device,
                               precision=config.train.precision)
        holdout, test = search_holdout, search_test
        if long_finetune_steps > 0:
            long_finetune(model, dataset.train, long_finetune_steps, config.train, config.seed + 1000 + member.iteration,
                          progress=progress, teacher=teacher)
            holdout = evaluate(model, dataset.holdout, config.train.eval_batch_size, device=config.train.device,
                               precision=config.train.precision)
            test = evaluate(model, dataset.test, config.train.eval_batch_size, device=config.train.device,
                            precision=config.train.precision)
        data = onnx_bytes(model, shape)
        difference = _max_abs_diff(model, data, check_images)
        if difference > 1e-4:
            raise RuntimeError(f"iteration {member.iteration}: onnxruntime differs from torch by {difference:.2e}")
        rows.append({"iteration": member.iteration, "search_ms": member.measured_ms,
                     "predicted_ms": member.predicted_ms, "holdout_acc": holdout, "test_acc": test,
                     "search_holdout_acc": search_holdout, "search_test_acc": search_test,
                     "long_finetune_steps": long_finetune_steps,
                     "params": sum(r.params for r in count(model.spec, config.data.resolution)),
                     "macs": sum(r.macs for r in count(model.spec, config.data.resolution)),
                     "max_abs_diff": difference})
        trained.append((model, data))
    # Side by side: every network in each of measure.repeats interleaved passes, its best pass kept.
    passes = measure_onnx_passes([data for _, data in trained], measurer, config.measure.repeats)
    for row, measured in zip(rows, best_of(passes)):
        row["export_ms"] = measured.latency_ms
    front = pareto_front(list(zip(rows, trained)), lambda pair: pair[0]["export_ms"], lambda pair: pair[0]["holdout_acc"])
    # Names rank members by the side-by-side latency that chose them.
    for rank, (row, (model, data)) in enumerate(front, start=1):
        name = member_name(rank, row["export_ms"], row["holdout_acc"])
        folder = out / name
        proto = onnx.load_from_string(data)
        metadata = {
            "netadapt.name": name,
            # repr: the full float, so the metadata and family.csv agree exactly
            "netadapt.search_latency_ms": repr(float(row["search_ms"])),
            "netadapt.export_latency_ms": repr(float(row["export_ms"])),
            "netadapt.target_fingerprint": json.dumps(fingerprint, sort_keys=True),
            "netadapt.holdout_accuracy": repr(float(row["holdout_acc"])),
            "netadapt.test_accuracy": repr(float(row["test_acc"])),
            "netadapt.spec": model.spec.to_yaml(),
        }
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        atomic_write_bytes(folder / "model.onnx", proto.SerializeToString())
        model.spec.save(folder / "spec.yaml")
        save_checkpoint(folder / "weights.pt", model)
        row.update(name=name, path=f"{name}/model.onnx")
        echo(f"{name}: {row['export_ms']:.3f} ms side by side ({row['search_ms']:.3f} at search), "
             f"holdout {row['holdout_acc']:.2%}, test {row['test_acc']:.2%}")
    frame = pd.DataFrame([row for row, _ in front], columns=FAMILY_COLUMNS)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    atomic_write_text(out / "family.csv", buffer.getvalue())
    return frame
