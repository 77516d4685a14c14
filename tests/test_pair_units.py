"""benchmarks/pair_units.py: the inclusion-exclusion it compares, and the script end to end on a tiny target."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

import mobilenetv3 as m
from netadapt.latency.units import units_of


def _script():
    script = Path(__file__).parent.parent / "benchmarks" / "pair_units.py"
    spec = importlib.util.spec_from_file_location("pair_units", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pairs_count_the_overhead_once_and_every_inner_boundary_as_the_network_runs_it():
    # A model of latency: one session overhead per model, each unit's own cost, the layout conversion
    # at a model's input and output, and a cheaper blocked hand-over at each boundary inside a model.
    units = units_of(m.small(num_classes=10, in_channels=1), (1, 1, 28, 28))
    cost = {unit.key(): 0.01 * (index + 1) for index, unit in enumerate(units)}
    overhead, convert, inner = 0.05, 0.003, 0.001

    def model_ms(part):
        return overhead + sum(cost[u.key()] for u in part) + 2 * convert + inner * (len(part) - 1)

    single_ms = {u.key(): model_ms([u]) for u in units}
    pair_ms = {(a.key(), b.key()): model_ms([a, b]) for a, b in zip(units, units[1:])}
    module = _script()
    assert module.pair_prediction(units, single_ms, pair_ms) == pytest.approx(model_ms(units))
    # The single units' sum pays the overhead and the conversions once per unit.
    assert sum(single_ms[u.key()] for u in units) - model_ms(units) == pytest.approx((len(units) - 1) * (overhead + 2 * convert - inner))


def test_the_script_measures_units_pairs_and_networks_and_writes_each_network(tmp_path, capsys):
    module = _script()
    out = tmp_path / "pairs"
    assert module.main(["--input", "1x1x28x28", "--networks", "2", "--passes", "1", "--fit", "2", "--draws", "2",
                        "--out", str(out)]) == 0
    frame = pd.read_csv(out / "networks.csv")
    assert list(frame["kind"]) == ["base", "random", "trajectory"]
    assert (frame[["measured_ms", "single_sum_ms", "pair_sum_ms"]] > 0).all().all()
    assert (frame["single_sum_ms"] > frame["measured_ms"]).all(), "each unit alone pays a session's overhead"
    assert "pairs, raw inclusion-exclusion" in capsys.readouterr().out


def test_table_mode_refuses_separate_rather_than_ignoring_it(capsys):
    with pytest.raises(SystemExit) as stopped:
        _script().main(["--table", "--separate"])
    assert stopped.value.code == 2
    assert "--table measures the units and the whole networks apart already" in capsys.readouterr().err
