"""benchmarks/headline.py --quick end to end: every step, its outputs, and a resume that retrains nothing done."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from netadapt.config import load_config
from netadapt.data import EMBEDDED_PATH
from netadapt.rundir import RunDir
from test_data import write_idx

REPO = Path(__file__).resolve().parents[1]
ABLATION_COLUMNS = ["lever", "setting", "iterations", "search_s", "network", "ms", "test_acc", "diff_pts",
                    "ci_low_pts", "ci_high_pts"]
COLUMNS = ["budget_ms", "multiplier", "multiplier_ms", "multiplier_acc", "netadapt_ms", "netadapt_acc",
           "acc_gain_pts", "ci_low_pts", "ci_high_pts", "speedup_at_matched_acc"]


def fashion_mnist_files(root: Path) -> Path:
    """The embedded subset written as the four Fashion-MNIST idx files: the headline's input, without apt."""
    root.mkdir(parents=True, exist_ok=True)
    embedded = np.load(EMBEDDED_PATH)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", embedded[f"{split}_images"])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", embedded[f"{split}_labels"])
    return root


def headline(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "headline.py"), "--no-progress", *arguments],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "NETADAPT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
    )


def test_headline_refuses_without_the_data_and_names_the_install(tmp_path):
    done = headline(tmp_path, "--quick", "--data", str(tmp_path / "absent"), "--work", str(tmp_path / "work"))
    assert done.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "work" / "budgets.json").exists()


def test_headline_quick_runs_every_step_and_resumes_without_retraining(tmp_path):
    data = fashion_mnist_files(tmp_path / "fashion")
    work, out = tmp_path / "work", tmp_path / "out"
    # 0.95 is a budget a few cuts meet; 0.35 one that four quick iterations do not: both paths run.
    arguments = ["--quick", "--data", str(data), "--work", str(work), "--out", str(out), "--widths", "0.95", "0.35"]
    first = headline(tmp_path, *arguments)
    assert first.returncode == 0, first.stderr[-3000:]

    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison.columns) == COLUMNS
    assert list(comparison["multiplier"]) == [0.95, 0.35]
    assert comparison["multiplier_acc"].between(0, 100).all()
    reached = comparison.dropna(subset=["netadapt_ms"])
    assert len(reached) >= 1, first.stdout[-3000:]
    for row in reached.itertuples():
        assert row.netadapt_ms <= row.multiplier_ms  # picked at or under the budget, in the same measurement
        assert row.ci_low_pts <= row.acc_gain_pts <= row.ci_high_pts
        assert row.acc_gain_pts == pytest.approx(row.netadapt_acc - row.multiplier_acc, abs=1e-6)

    arms = pd.read_csv(out / "arms.csv")
    assert set(arms["seed"]) == {0, 1}
    assert {"multiplier", "netadapt", "netadapt_scratch"} <= set(arms["kind"])
    scratch = arms[arms["kind"] == "netadapt_scratch"].iloc[0]
    multiplier = arms[(arms["kind"] == "multiplier") & (arms["name"] == "multiplier-0.95")].iloc[0]
    finetuned = arms[arms["kind"] == "netadapt"].iloc[0]
    assert scratch["steps"] == multiplier["steps"] > finetuned["steps"]  # equal training for the from-scratch arms
    # Every trained network is an ONNX file that scores what the table says on the test images.
    test = np.load(EMBEDDED_PATH)
    images = ((test["test_images"].astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    for row in arms.itertuples():
        session = ort.InferenceSession(str(work / "arms" / f"{row.name}-s{row.seed}.onnx"))
        name = session.get_inputs()[0].name
        predicted = np.concatenate([session.run(None, {name: images[i:i + 1]})[0].argmax(1) for i in range(0, 400)])
        recorded = np.load(work / "arms" / f"{row.name}-s{row.seed}.npy")[:400]
        assert (predicted == test["test_labels"][:400]).mean() == pytest.approx(recorded.mean(), abs=0.01)
    assert (out / "headline.md").read_text().count("| multiplier |") >= 2
    assert (out / "pareto.png").stat().st_size > 0

    # A run killed while training an arm: only that arm is trained again. Then the ablation, one lever.
    killed = arms.iloc[-1]
    (work / "arms" / f"{killed['name']}-s{killed['seed']}.json").unlink()
    again = headline(tmp_path, *arguments, "--ablation", "--levers", "depth_proposals")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search: finished before" in again.stdout and "latency: measured before" in again.stdout
    assert again.stdout.count("trained before") == len(arms) - 1
    assert pd.read_csv(out / "comparison.csv")[COLUMNS[:4]].equals(comparison[COLUMNS[:4]])

    ablation = pd.read_csv(out / "ablation.csv")
    assert list(ablation.columns) == ABLATION_COLUMNS
    assert list(ablation["lever"]) == ["reference", "depth_proposals"]
    reference = comparison[comparison["multiplier"] == 0.95].iloc[0]
    assert ablation["test_acc"].iloc[0] == pytest.approx(reference["netadapt_acc"])
    variant = RunDir(work / "ablation" / "depth_proposals")
    assert not variant.read_history()["group"].astype(str).str.startswith("remove[").any()
    if not math.isnan(ablation["diff_pts"].iloc[1]):
        row = ablation.iloc[1]
        assert row.ci_low_pts <= row.diff_pts <= row.ci_high_pts

    # The work folder's searches were made for their budgets: another budget is refused, naming the folder.
    state_before = (work / "search" / "state.json").read_bytes()
    other = headline(tmp_path, *arguments, "--search-margin", "0.9")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert f"{work / 'search'} holds a search to" in other.stderr and "its own --work" in other.stderr
    assert (work / "search" / "state.json").read_bytes() == state_before
    # The search landed just under the higher budget on its way (search.landings), and a folder
    # searched that way is not reused for a search that aims past it.
    budgets = json.loads((work / "budgets.json").read_text())["budgets_ms"]
    assert load_config(RunDir(work / "search").config_path).search.landings == [pytest.approx(0.97 * budgets["0.95"])]
    past = headline(tmp_path, *arguments, "--no-landings")
    assert past.returncode == 2 and "Traceback" not in past.stderr
    assert f"{work / 'search'} holds a search landing at" in past.stderr
    assert (work / "search" / "state.json").read_bytes() == state_before
