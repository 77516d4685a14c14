"""Training stage: determinism, divergence, checkpoints, a real short run, the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from mobilenetv3 import build
from netadapt.cli.main import main
from netadapt.config import DataConfig, TrainConfig
from netadapt.data import Split, load_dataset
from netadapt.checkpoint import load_checkpoint
from netadapt.train import (
    TrainingDiverged,
    distillation_loss,
    evaluate,
    finetune,
    recalibrate_batchnorm,
    train,
)


@pytest.fixture(scope="module")
def embedded():
    return load_dataset(DataConfig())


@pytest.fixture
def small_split(embedded) -> Split:
    return embedded.train.subset(512)


# One thread: tiny networks gain nothing from two, and a shared CI machine's
# load makes two-thread OpenMP barriers very slow.
FAST = TrainConfig(batch_size=32, bn_recalibration=64, eval_batch_size=64, threads=1)


def test_finetune_is_deterministic_for_a_seed(tiny_spec, small_split):
    weights = []
    for seed in (7, 7, 8):
        torch.manual_seed(0)
        model = build(tiny_spec)
        finetune(model, small_split, 5, FAST, seed=seed)
        weights.append(torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_distillation_loss_mixes_cross_entropy_and_softened_kl():
    generator = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(8, 10, generator=generator), torch.randn(8, 10, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    hard = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.equal(distillation_loss(logits, teacher, labels, 0.0, 4.0), hard)
    temperature = 2.0
    p = torch.softmax(teacher / temperature, dim=1)
    kl = (p * (p.log() - torch.log_softmax(logits / temperature, dim=1))).sum(dim=1).mean()
    assert torch.allclose(distillation_loss(logits, teacher, labels, 1.0, temperature), temperature**2 * kl, atol=1e-6)
    assert torch.allclose(distillation_loss(logits, teacher, labels, 0.3, temperature),
                          0.7 * hard + 0.3 * temperature**2 * kl, atol=1e-6)
    assert distillation_loss(teacher, teacher, labels, 1.0, temperature).abs() < 1e-6  # nothing left to learn


def test_finetune_distils_from_the_teacher_only_when_asked(tiny_spec, small_split):
    torch.manual_seed(0)
    teacher, start = build(tiny_spec), build(tiny_spec)
    teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items()}

    def tuned(config: TrainConfig) -> dict:
        model = build(tiny_spec)
        model.load_state_dict(start.state_dict())
        finetune(model, small_split, 3, config, seed=1, teacher=teacher)
        return model.state_dict()

    distilled = dataclasses.replace(FAST, distill_alpha=0.5)
    plain = tuned(FAST)
    with_teacher = tuned(distilled)
    assert any(not torch.equal(plain[k], with_teacher[k]) for k in plain)  # the teacher changed the steps
    assert all(torch.equal(with_teacher[k], v) for k, v in tuned(distilled).items())  # deterministic
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_weights.items())  # the teacher unchanged
    assert not teacher.training


def test_train_stats_count_images_and_time(tiny_spec, small_split):
    stats = train(build(tiny_spec), small_split, FAST, steps=6, seed=0, progress=False)
    assert (stats.steps, stats.images) == (6, 6 * 32)
    assert 0 < stats.data_seconds < stats.seconds and stats.images_per_second > 0
    assert stats.final_loss == pytest.approx(stats.final_loss) and stats.final_loss > 0  # finite


def test_evaluate_is_deterministic_and_restores_mode(tiny_spec, embedded):
    model = build(tiny_spec).train()
    split = embedded.holdout.subset(200)
    first = evaluate(model, split, batch_size=64)
    assert first == evaluate(model, split, batch_size=200)  # eval mode: batch size does not matter
    assert model.training
    assert 0.0 <= first <= 1.0


def test_recalibration_makes_eval_statistics_match_the_data(tiny_spec, small_split):
    model = build(tiny_spec)
    recalibrate_batchnorm(model, small_split, images=len(small_split), batch_size=64)  # every image, in batches
    stem_bn = model.features[0][1]
    with torch.no_grad():
        activations = model.features[0][0](small_split.images)
    assert torch.allclose(stem_bn.running_mean, activations.mean(dim=(0, 2, 3)), atol=1e-4)
    assert stem_bn.momentum == 0.01  # restored


def test_recalibration_draws_a_seeded_random_subset_not_the_first_images():
    # Class-sorted data, as a `folder` data set is: the first half class 0 (all zeros), the rest class 1 (ones).
    images = torch.cat([torch.zeros(600, 1, 4, 4), torch.ones(600, 1, 4, 4)])
    labels = torch.cat([torch.zeros(600, dtype=torch.long), torch.ones(600, dtype=torch.long)])
    split = Split(images, labels)

    def recalibrated_mean(seed: int) -> float:
        norm = torch.nn.BatchNorm2d(1)
        recalibrate_batchnorm(torch.nn.Sequential(norm), split, images=200, batch_size=64, seed=seed)
        return norm.running_mean.item()

    # The first 200 images would all be zeros; a random 200 of the 1,200 are about half ones.
    assert 0.35 < recalibrated_mean(0) < 0.65
    assert recalibrated_mean(0) == recalibrated_mean(0)  # the same images for the same seed
    assert recalibrated_mean(1) != recalibrated_mean(0)


def test_huge_learning_rate_raises_training_diverged(tiny_spec, small_split):
    config = TrainConfig(batch_size=32, finetune_lr=1e12, bn_recalibration=0, threads=1)
    with pytest.raises(TrainingDiverged, match=r"finetune diverged at step \d+ of 30: loss is (nan|inf)"):
        finetune(build(tiny_spec), small_split, 30, config, seed=0)


def test_short_training_on_embedded_data_beats_chance_widely(tiny_spec, embedded):
    # Tiny network, 3000 images, 250 steps of 32: a few seconds on 2 cores.
    torch.manual_seed(0)
    model = build(tiny_spec)
    config = TrainConfig(batch_size=32, lr=0.2, bn_recalibration=512, threads=1)
    train(model, embedded.train.subset(3000), config, steps=250, seed=0, progress=False)
    accuracy = evaluate(model, embedded.holdout)
    assert accuracy > 0.6, f"holdout accuracy {accuracy:.3f} (chance is 0.1)"


def test_train_command_end_to_end(tiny_spec, tmp_path, capsys):
    spec_path = tmp_path / "tiny.yaml"
    tiny_spec.replace(num_classes=3, in_channels=3).save(spec_path)  # the data overrides both
    out = tmp_path / "run"
    argv = ["train", "--set", f"model.spec={spec_path}", "--set", "train.steps=3", "--set", "train.batch_size=16"]
    argv += ["--set", "train.bn_recalibration=32", "--set", "data.holdout=100", "--set", "train.threads=1"]
    argv += ["--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and "holdout" in printed and "test" in printed
    assert {p.name for p in out.iterdir()} == {"base.pt", "spec.yaml", "config.yaml", "metrics.json"}
    model = load_checkpoint(out / "base.pt")
    assert (model.spec.in_channels, model.spec.num_classes) == (1, 10)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["steps"] == 3 and resolved["data"]["holdout"] == 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 <= metrics["test_accuracy"] <= 1
    # A second run into the same directory is refused rather than overwriting it.
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_the_base_cache_key_ignores_what_never_reaches_base_training():
    from mobilenetv3 import small
    from netadapt.base import base_cache_key
    from netadapt.config import load_config

    spec = small(num_classes=10, in_channels=1)
    key = base_cache_key(load_config(), spec, 1000)
    # Fine-tune settings, and an automatic holdout resolving to the same size, share the cached base ...
    for overrides in (["train.finetune_lr=0.5"], ["train.distill_alpha=0.5", "train.distill_temperature=2"],
                      ["data.holdout=1000"], ["train.eval_batch_size=7", "train.threads=1"]):
        assert base_cache_key(load_config(None, overrides), spec, 1000) == key, overrides
    # ... and what changes the weights does not.
    for overrides in (["train.steps=5"], ["train.bn_recalibration=0"], ["seed=1"], ["data.resolution=32"]):
        assert base_cache_key(load_config(None, overrides), spec, 1000) != key, overrides
    assert base_cache_key(load_config(), spec, 2000) != key
