"""Where training runs: device names and their resolution, the clear errors, precision, and the GPU paths."""

from __future__ import annotations

import pytest
import torch

from mobilenetv3 import build
from netadapt.cli.main import main
from netadapt.config import DataConfig, TrainConfig, load_config
from netadapt.data import Split, load_dataset
from netadapt.devices import check_device_name, resolve_device
from netadapt.errors import ConfigError
from netadapt.train import evaluate, evaluate_scores, finetune, recalibrate_batchnorm

gpu = pytest.mark.gpu  # run with `pytest -m gpu` where a GPU is present; skipped elsewhere (conftest.py)


@pytest.fixture(scope="module")
def small_split() -> Split:
    return load_dataset(DataConfig()).train.subset(256)


def _fast(**changes) -> TrainConfig:
    return TrainConfig(batch_size=32, bn_recalibration=64, eval_batch_size=64, threads=1, **changes)


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names_are_checked_without_hardware(name):
    assert check_device_name(name) == name
    assert load_config(None, [f"train.device={name}"]).train.device == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CUDA", "cpu:0", "tpu", "", 3])
def test_a_malformed_device_name_is_refused_when_the_config_is_read(name):
    with pytest.raises(ConfigError, match=r"train\.device must be auto, cpu, cuda, cuda:N or mps, got"):
        TrainConfig(device=name)
    if isinstance(name, str) and name and not name.endswith(":"):  # "cuda:" is YAML for a mapping
        with pytest.raises(ConfigError, match=r"train\.device must be auto, cpu, cuda, cuda:N or mps"):
            load_config(None, [f"train.device={name}"])


def test_auto_and_cpu_resolve_on_any_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_a_cuda_device_this_machine_lacks_is_refused_naming_the_key():
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=rf"train\.device is 'cuda:{count}' but this machine has {count} CUDA"):
            resolve_device(f"cuda:{count}")
    else:
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match=rf"train\.device is '{name}' but this machine has no CUDA device "
                                                  r"\(torch .*\); use auto or cpu"):
                resolve_device(name)
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match=r"train\.device is 'mps' but this machine has no usable Apple MPS"):
            resolve_device("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
@pytest.mark.parametrize("command", [
    ["search", "--budget-ratio", "0.5", "--set", "train.device=cuda"],
    ["train", "--set", "train.device=cuda"],
])
def test_commands_refuse_a_missing_gpu_before_any_work(tmp_path, capsys, command):
    out = tmp_path / "run"
    assert main([*command, "--out", str(out)]) != 0
    error = capsys.readouterr().err
    assert "train.device is 'cuda' but this machine has no CUDA device" in error and "Traceback" not in error
    assert not out.exists(), "nothing is written before the refusal"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_float32_weights_deterministically(tiny_spec, small_split, precision):
    reference = build(tiny_spec, seed=0)
    finetune(reference, small_split, 4, _fast(), seed=1)
    runs = []
    for _ in range(2):
        model = build(tiny_spec, seed=0)
        stats = finetune(model, small_split, 4, _fast(precision=precision), seed=1)
        assert torch.isfinite(torch.tensor(stats.final_loss))
        assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
        runs.append(model.state_dict())
    for name, tensor in runs[0].items():
        assert torch.equal(tensor, runs[1][name]), name
    changed = [name for name, tensor in runs[0].items()
               if tensor.is_floating_point() and not torch.equal(tensor, reference.state_dict()[name])]
    assert changed, f"{precision} autocast must change the arithmetic, so the weights differ from fp32's"
    scores = evaluate_scores(model, small_split, 64, precision=precision)
    assert 0 <= scores.accuracy <= 1 and scores.loss > 0


def test_an_unknown_precision_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config(None, ["train.precision=fp8"])


# ----------------------------------------------------------------- GPU only
@gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_gives_the_model_back_on_the_cpu(tiny_spec, small_split, precision):
    model = build(tiny_spec, seed=0)
    stats = finetune(model, small_split, 5, _fast(device="cuda", precision=precision), seed=1)
    assert torch.isfinite(torch.tensor(stats.final_loss))
    assert {parameter.device.type for parameter in model.parameters()} == {"cpu"}
    recalibrate_batchnorm(model, small_split, 64, 64, device="cuda")
    assert {buffer.device.type for buffer in model.buffers()} == {"cpu"}
    on_gpu = evaluate_scores(model, small_split, 64, device="cuda")
    on_cpu = evaluate_scores(model, small_split, 64, device="cpu")
    assert abs(on_gpu.loss - on_cpu.loss) < 1e-3 and abs(on_gpu.accuracy - on_cpu.accuracy) <= 2 / len(small_split)


@gpu
def test_deterministic_cuda_training_repeats(tiny_spec, small_split):
    runs = []
    for _ in range(2):
        model = build(tiny_spec, seed=0)
        finetune(model, small_split, 5, _fast(device="cuda", deterministic=True), seed=1)
        runs.append(model.state_dict())
    for name, tensor in runs[0].items():
        assert torch.equal(tensor, runs[1][name]), name
    assert evaluate(model, small_split, 64, device="cuda") >= 0


def test_the_gpu_smoke_benchmark_says_it_needs_cuda_where_there_is_none():
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_smoke.py"
    hidden = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, even on a machine with one
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=hidden, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "gpu_smoke needs a CUDA GPU: torch" in done.stderr and "Traceback" not in done.stderr


@gpu
def test_streamed_folder_trains_on_cuda_from_pinned_batches(tiny_spec, tmp_path):
    import numpy as np

    for label, value in (("cat", 40), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(20):
            pixels = np.clip(value + np.random.default_rng(i).integers(-20, 20, (10, 10)), 0, 255).astype(np.uint8)
            np.save(tmp_path / label / f"{i}.npy", pixels)
    config = DataConfig(dataset="folder", path=str(tmp_path), holdout=4, resolution=16,
                        cache="stream", workers=2)
    data = load_dataset(config)
    model = build(tiny_spec, seed=0)
    stats = finetune(model, data.train, 4, TrainConfig(batch_size=8, bn_recalibration=16, threads=1, device="cuda"),
                     seed=1)
    assert stats.images == 32 and {parameter.device.type for parameter in model.parameters()} == {"cpu"}
    assert 0 <= evaluate(model, data.holdout, 8, device="cuda") <= 1
