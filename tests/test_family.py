"""Exporting a run's Pareto family, and `netadapt report`."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from netadapt.family import FAMILY_COLUMNS, export_family, run_members
from netadapt.report import PLOT_HINT, report
from netadapt.rundir import RunDir
from netadapt.search import run_search
from netadapt.checkpoint import load_checkpoint


@pytest.fixture(scope="module")  # one worker runs this module whole (tests/conftest.py)
def finished_run(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("family") / "run"
    budget = prepared.unreachable_budget()
    result = run_search(prepared.config(budget, "search.max_iterations=2"), out=out,
                        dataset=prepared.dataset, progress=False, echo=lambda m: None)
    return result.run_dir


def test_export_writes_each_pareto_member(finished_run, prepared, tmp_path):
    family = export_family(finished_run, tmp_path / "family", dataset=prepared.dataset, progress=False,
                           echo=lambda m: None)
    written = pd.read_csv(tmp_path / "family" / "family.csv")
    assert list(written.columns) == FAMILY_COLUMNS and len(written) == len(family) >= 1
    members = {m.iteration: m for m in run_members(RunDir(finished_run))}
    # Pareto on the side-by-side figures: sorted by latency, accuracy strictly rising, and no network of
    # the run (the base and every winner, re-measured in the same passes) dominates a member.
    assert list(written["export_ms"]) == sorted(written["export_ms"])
    assert all(np.diff(written["holdout_acc"]) > 0)
    assert len(members) == 3 and set(written["iteration"]) <= set(members)
    assert sorted(written["name"]) == list(written["name"]), "names sort as the menu does"
    for row in written.itertuples():
        folder = tmp_path / "family" / row.name
        assert {p.name for p in folder.iterdir()} == {"model.onnx", "spec.yaml", "weights.pt"}
        proto = onnx.load(folder / "model.onnx")
        metadata = {p.key: p.value for p in proto.metadata_props}
        assert float(metadata["netadapt.search_latency_ms"]) == pytest.approx(members[row.iteration].measured_ms)
        assert "cpu" in metadata["netadapt.target_fingerprint"] and "blocks:" in metadata["netadapt.spec"]
        assert row.export_ms > 0 and 0 <= row.test_acc <= 1 and row.max_abs_diff <= 1e-4
        # the ONNX file alone reproduces the exported weights
        model = load_checkpoint(folder / "weights.pt").eval()
        images = prepared.dataset.test.images[:4]
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        for image in images:
            with torch.no_grad():
                expected = model(image.unsqueeze(0)).numpy()
            actual = session.run(None, {session.get_inputs()[0].name: image.unsqueeze(0).numpy()})[0]
            np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_long_finetune_records_both_accuracies(finished_run, prepared, tmp_path):
    messages = []
    family = export_family(finished_run, tmp_path / "family", long_finetune_steps=3, dataset=prepared.dataset,
                           progress=False, echo=messages.append)
    assert (family["long_finetune_steps"] == 3).all()
    assert family["search_test_acc"].notna().all() and family["test_acc"].notna().all()
    # The front is decided after the final training: on the fine-tuned holdout accuracy.
    assert all(np.diff(family["holdout_acc"]) > 0) and list(family["export_ms"]) == sorted(family["export_ms"])
    assert len(messages) == len(family) and all("side by side" in m for m in messages)


def test_report_with_the_plot(finished_run, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is part of the dev extra")
    from netadapt.cli.main import main

    assert main(["report", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "measured ms" in out and f"wrote {finished_run / 'pareto.png'}" in out
    assert (finished_run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_matplotlib_still_prints_the_table(finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    text, plot = report(finished_run, tmp_path / "p.png")
    assert plot is None and not (tmp_path / "p.png").exists()
    assert len(text.splitlines()) == 1 + len(run_members(RunDir(finished_run)))
    from netadapt.cli.main import main

    assert main(["report", str(finished_run), "--plot", str(tmp_path / "p.png")]) == 0
    assert PLOT_HINT in capsys.readouterr().out


def test_report_draws_a_baseline_when_the_run_has_one(finished_run, tmp_path):
    pytest.importorskip("matplotlib")
    (finished_run / "baseline.csv").write_text("name,measured_ms,test_acc\nx0.5,0.1,0.5\nx1.0,0.3,0.8\n")
    try:
        text, plot = report(finished_run, tmp_path / "p.png")
    finally:
        (finished_run / "baseline.csv").unlink()
    assert "width-multiplier baseline" in text and "x0.5" in text and plot.exists()


def _shared_run_with_remote_target(finished_run, tmp_path, port: int):
    """A copy of `finished_run` whose config.yaml says it measures on remote://127.0.0.1:`port`."""
    import shutil

    import yaml

    shared = tmp_path / "shared-run"
    shutil.copytree(finished_run, shared)
    config = yaml.safe_load((shared / "config.yaml").read_text())
    config["target"].update(device=f"remote://127.0.0.1:{port}", token_file=str(tmp_path / "secret"), retries=0)
    (shared / "config.yaml").write_text(yaml.safe_dump(config))
    return shared, f"remote://127.0.0.1:{port}"


def test_a_run_directory_cannot_choose_where_the_device_token_goes(finished_run, tmp_path, capsys):
    """A shared run's config.yaml naming a remote device is refused by every command that measures from it,
    before any connection, until --target confirms that same device."""
    import socket

    from netadapt.cli.main import main

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    (tmp_path / "secret").write_text("token-from-the-victims-disk\n")
    shared, device = _shared_run_with_remote_target(finished_run, tmp_path, listener.getsockname()[1])
    commands = {
        "export": ["export", str(shared), "--out", str(tmp_path / "family")],
        "validate": ["lut", "validate", "--run", str(shared)],
        "resume": ["search", "--resume", str(shared)],
    }
    try:
        for name, argv in commands.items():
            assert main(argv) == 2, name
            err = capsys.readouterr().err
            assert f"{shared / 'config.yaml'}: target.device is '{device}'" in err, (name, err)
            assert f"confirm it with --target '{device}'" in err and "Traceback" not in err, (name, err)
            assert main([*argv, "--target", "remote://127.0.0.1:1"]) == 2, name
            assert "but --target names 'remote://127.0.0.1:1'" in capsys.readouterr().err, name
        with pytest.raises(BlockingIOError):
            listener.accept()  # no command opened a connection to the run's device
        assert not (tmp_path / "family").exists()
    finally:
        listener.close()
    # Confirmed, export goes past the check and fails on the device itself: nothing listens there now.
    assert main([*commands["export"], "--target", device]) == 2
    err = capsys.readouterr().err
    assert "target.device is" not in err and "127.0.0.1" in err, err
    RunDir(finished_run).confirm_target("local", None, None)  # a local run needs no confirmation
