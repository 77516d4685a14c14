"""The onnxruntime benchmarker: statistics, run counts, fingerprint, target from config, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from mobilenetv3 import build
from netadapt.benchmark import (
    LocalMeasurer,
    Measurement,
    Measurer,
    Target,
    measure,
    measure_passes,
    measure_spec,
    measure_spec_ms,
    scheduling_priority,
    summarize,
)
from netadapt.cli.main import main
from netadapt.config import MeasureConfig, TargetConfig
from netadapt.errors import ConfigError
from netadapt.onnx_export import export_onnx, onnx_bytes

SHAPE = (1, 1, 32, 32)
FAST = dict(warmup_runs=2, min_runs=12, min_seconds=0.0, max_runs=1000)


@pytest.fixture
def tiny_onnx(tiny_spec) -> bytes:
    return onnx_bytes(build(tiny_spec), SHAPE)


def test_summarize_statistics_on_known_times():
    times = [float(x) for x in range(1, 11)]  # 1..10 ms
    result = summarize(times, {"cpu": "x"})
    assert result.median_ms == pytest.approx(5.5)
    assert result.p10_ms == pytest.approx(np.percentile(times, 10))
    assert result.p90_ms == pytest.approx(np.percentile(times, 90))
    assert result.mean_ms == pytest.approx(5.5)
    assert result.cv == pytest.approx(np.std(times, ddof=1) / 5.5)
    assert result.runs == 10 and result.fingerprint == {"cpu": "x"}


def test_summarize_min_is_the_fastest_run_and_can_be_the_figure():
    # Three rounds of 4: the slow first round holds the fastest single run.
    times = [9.0, 1.5, 9.0, 9.0, 5.0, 5.0, 5.0, 5.0, 6.0, 6.0, 6.0, 6.0]
    result = summarize(times, windows=3, statistic="min")
    assert result.min_ms == 1.5 and result.latency_ms == 1.5
    assert result.quiet_ms == 5.0 and result.median_ms == 6.0
    assert result.statistic_ms("min") == 1.5 and result.statistic_ms("quiet") == 5.0


def test_summarize_median_ignores_one_preempted_run():
    # Why the median is the figure: a single 100x outlier moves the mean only.
    result = summarize([1.0] * 20 + [100.0])
    assert result.median_ms == 1.0 and result.mean_ms > 5.0


def test_summarize_refuses_no_runs():
    with pytest.raises(ValueError):
        summarize([])


def test_measure_tiny_model_respects_min_runs(tiny_onnx):
    result = measure(tiny_onnx, Target.from_settings(SHAPE, **FAST))
    assert result.runs >= 12
    assert 0 < result.min_ms <= result.p10_ms <= result.median_ms <= result.p90_ms
    assert result.mean_ms > 0 and result.cv >= 0
    assert result.fingerprint["threads"] == 1


def test_measure_runs_until_min_seconds(tiny_onnx):
    # With min_runs=1 only the time floor can keep it going past one run.
    result = measure(tiny_onnx, Target.from_settings(SHAPE, warmup_runs=0, min_runs=1, min_seconds=0.05))
    assert result.runs > 1
    assert result.mean_ms * result.runs >= 0.05 * 1e3 * 0.99


def test_measure_stops_at_max_runs(tiny_onnx):
    result = measure(tiny_onnx, Target.from_settings(SHAPE, warmup_runs=0, min_runs=5, min_seconds=60.0, max_runs=7))
    assert result.runs == 7


def test_fingerprint_is_stable_json_and_names_the_settings():
    a = Target.from_settings(threads=1, optimization_level="all")
    fingerprint = a.fingerprint()
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    assert fingerprint == Target.from_settings(threads=1, min_runs=3).fingerprint()  # measuring settings are not the target
    for key in ("cpu", "cores", "onnxruntime", "provider", "threads", "optimization_level"):
        assert key in fingerprint
    assert Target.from_settings(threads=2).fingerprint() != fingerprint
    assert Target.from_settings(optimization_level="basic").fingerprint() != fingerprint


def test_target_from_config_and_validation():
    target = Target.from_config(
        TargetConfig(threads=2, optimization_level="extended", batch=4), MeasureConfig(min_runs=7), (1, 3, 64, 64)
    )
    assert target.session.threads == 2 and target.session.optimization_level == "extended"
    assert target.input_shape == (4, 3, 64, 64) and target.measuring.min_runs == 7
    # A provider only a remote device has is a valid target description ...
    remote_only = Target.from_settings(provider="NoSuchProvider")
    # ... but measuring here refuses it, naming it.
    with pytest.raises(ConfigError, match="NoSuchProvider"):
        LocalMeasurer(remote_only)
    with pytest.raises(ConfigError, match="optimization_level"):
        Target.from_settings(optimization_level="max")
    with pytest.raises(ConfigError, match="priority"):
        Target.from_settings(priority="urgent")
    assert Target.from_settings(priority="realtime").fingerprint() == Target().fingerprint()  # precision, not the target


def test_target_is_composed_of_the_config_sections_it_copies():
    session, measuring = TargetConfig(threads=2), MeasureConfig(min_runs=9)
    target = Target.from_config(session, measuring, (1, 3, 32, 32))
    # The config sections own every setting: Target declares only the input shape beside them.
    assert [f.name for f in dataclasses.fields(Target)] == ["input_shape", "session", "measuring"]
    assert isinstance(target.session, TargetConfig) and isinstance(target.measuring, MeasureConfig)
    session.threads, measuring.min_runs = 7, 1  # a config changed later does not reach the target
    assert target.session.threads == 2 and target.measuring.min_runs == 9
    assert target.session.batch == target.input_shape[0] == 1
    assert Target.from_settings((4, 3, 32, 32)).session.batch == 4  # the batch follows the input
    # Flat settings are routed to the section that owns them; an unknown name is refused by name.
    assert target.with_settings(threads=3, windows=2).settings() == {**target.settings(), "threads": 3, "windows": 2}
    with pytest.raises(ConfigError, match="'thread'"):
        target.with_settings(thread=3)
    with pytest.raises(ConfigError, match="measure.windows"):
        target.with_settings(windows=0)
    with pytest.raises(ConfigError, match="target.threads"):
        Target.from_settings(threads=-1)


@pytest.mark.parametrize("priority", ["high", "realtime"])
def test_scheduling_priority_is_restored(priority, tiny_onnx):
    policy, nice = os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without root it warns and measures at normal priority
        with scheduling_priority(priority):
            pass
        result = measure(tiny_onnx, Target.from_settings(SHAPE, priority=priority, **FAST))
    assert result.runs >= 12
    assert os.sched_getscheduler(0) == policy and os.getpriority(os.PRIO_PROCESS, 0) == nice


def test_local_measurer_is_a_measurer_and_measures_specs(tiny_spec):
    measurer = LocalMeasurer(Target.from_settings(SHAPE, **FAST))
    assert isinstance(measurer, Measurer)
    result = measure_spec(tiny_spec, measurer, SHAPE)
    assert isinstance(result, Measurement) and result.fingerprint == measurer.fingerprint()
    assert measure_spec_ms(tiny_spec, measurer, SHAPE) > 0
    with pytest.raises(ConfigError, match="channels"):
        measure_spec(tiny_spec, measurer, (1, 3, 32, 32))


def test_measure_passes_shuffles_each_pass_and_returns_results_in_spec_order(tiny_spec, size_measurer):
    specs = [tiny_spec.replace(last_conv=width) for width in (8, 16, 24, 32, 40, 48, 56, 64)]
    sizes = [len(onnx_bytes(build(spec), SHAPE)) for spec in specs]
    assert len(set(sizes)) == len(sizes)
    measurer = size_measurer()
    passes = measure_passes(specs, measurer, SHAPE, passes=3)
    assert len(passes) == 3
    for one_pass in passes:
        assert [m.latency_ms for m in one_pass] == pytest.approx([size / 1000 for size in sizes])
    orders = [measurer.asked[i * len(specs) : (i + 1) * len(specs)] for i in range(3)]
    assert all(sorted(order) == sorted(sizes) for order in orders)
    # Drift over a pass must not follow the list: the passes go in other, differing orders.
    assert orders[0] != sizes and len({tuple(order) for order in orders}) == 3
    # Seeded: a rerun asks in the same orders.
    again = size_measurer()
    measure_passes(specs, again, SHAPE, passes=3)
    assert again.asked == measurer.asked


def test_bench_cli_onnx_file_json(tmp_path, tiny_spec, capsys):
    path = export_onnx(build(tiny_spec), tmp_path / "tiny.onnx", SHAPE)
    flags = ["--json", "--min-runs", "5", "--min-seconds", "0", "--warmup", "1", "--statistic", "p10"]
    assert main(["bench", str(path), *flags]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"] >= 5 and data["median_ms"] > 0
    assert {"p10_ms", "p90_ms", "mean_ms", "cv", "fingerprint"} <= set(data)
    assert data["latency_ms"] == data["p10_ms"] and data["min_ms"] <= data["p10_ms"]


def test_bench_cli_preset_text(capsys):
    args = ["bench", "--preset", "small", "--width", "0.35", "--input", "1x3x32x32", "--min-runs", "5", "--min-seconds", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "small-0.35 at 1x3x32x32" in out and "median" in out and "runs" in out


def test_bench_cli_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope.onnx")]) == 2
    assert "nope.onnx" in capsys.readouterr().err


def test_bench_measures_a_spec_file_as_the_search_would_adapt_it(tmp_path, tiny_spec):
    # A spec file saved for RGB ImageNet is measured with the config's data:
    # one input channel at 28x28 and the embedded set's 10 classes, as training adapts it.
    from netadapt.cli.bench import resolve
    from netadapt.cli.main import build_parser

    config = Path(__file__).resolve().parents[1] / "configs" / "embedded.yaml"
    spec_path = tmp_path / "spec.yaml"
    tiny_spec.replace(in_channels=3, num_classes=1000).save(spec_path)
    args = build_parser().parse_args(["bench", "--config", str(config), "--set", f"model.spec={spec_path}"])
    resolved = resolve(args)
    assert resolved.input_shape == (1, 1, 28, 28)
    assert (resolved.spec.in_channels, resolved.spec.num_classes) == (1, 10)
    assert resolved.spec.blocks == tiny_spec.blocks
    # Without --config a spec file keeps its own classes; --classes still wins.
    args = build_parser().parse_args(["bench", "--set", f"model.spec={spec_path}", "--input", "1x3x32x32", "--classes", "7"])
    assert resolve(args).spec.num_classes == 7
    args = build_parser().parse_args(["bench", "--set", f"model.spec={spec_path}", "--input", "1x3x32x32"])
    assert resolve(args).spec.num_classes == 1000


def test_workers_stop_spinning_between_runs_unless_asked():
    # Interleaved sessions' idle workers kept spinning and slowed the timed one
    # (benchmarks/interleaved_spinning.py); the default stops them when a run returns.
    default = Target.from_settings((1, 3, 32, 32), threads=2)
    assert default.session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    hot = default.with_settings(spin_between_runs=True)
    assert hot.session_options().get_session_config_entry("session.force_spinning_stop") == "0"
    # A different figure, so a different table.
    assert default.fingerprint()["spin_between_runs"] is False and default.fingerprint() != hot.fingerprint()
