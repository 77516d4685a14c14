import dataclasses
import subprocess
import sys
import typing
from typing import Literal

import pytest

from netadapt.config import Config, apply_overrides, check_ranges, load_config
from netadapt.errors import ConfigError


def test_defaults_load_without_a_file():
    config = load_config()
    assert config == Config()


def test_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ntrain:\n  steps: 50\nmodel:\n  preset: small\n")
    config = load_config(path, ["train.lr=0.5", "search.budget_ms=12", "data.mean=[0.1]"])
    assert config.seed == 3 and config.train.steps == 50 and config.model.preset == "small"
    assert config.train.lr == 0.5 and config.search.budget_ms == 12.0 and config.data.mean == [0.1]


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["train.steps=7", "target.threads=2"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.stepz=3"], "unknown key 'train.stepz'"),
        (["nonsense=1"], "unknown key 'nonsense'"),
        (["train.steps=many"], "train.steps must be an integer, got 'many'"),
        (["train.steps=1.5"], "train.steps must be an integer"),
        (["model.preset=huge"], r"model.preset must be one of \['large', 'small'\]"),
        (["train.flip=3"], "train.flip must be true or false"),
        (["data.mean=0.5"], "data.mean must be a list"),
        (["train"], "expected key=value"),
        (["train=3"], "train must be a mapping"),
        # The target and measure sections check their own ranges at load time.
        (["target.threads=-1"], "--set: target.threads must be an integer >= 0"),
        (["measure.windows=0"], "--set: measure.windows must be an integer >= 1"),
        (["measure.min_runs=5", "measure.max_runs=4"], r"measure.max_runs must be an integer >= measure.min_runs \(5\)"),
        (["measure.min_seconds=.inf"], "measure.min_seconds must be a finite number"),
        (["measure.min_seconds=.nan"], "measure.min_seconds must be a finite number"),
        (["target.retries=-1"], "target.retries must be an integer >= 0"),
        (["target.timeout_s=.nan"], "target.timeout_s must be a finite number > 0"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_files_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=f"{missing}: config file not found"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid YAML"):
        load_config(broken)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  batch_size: big\n")
    with pytest.raises(ConfigError, match=f"{wrong}: train.batch_size must be an integer"):
        load_config(wrong)


def test_apply_overrides_builds_nested_sections():
    assert apply_overrides({}, ["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_shipped_configs_load_and_embedded_matches_the_defaults():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs, "configs/ holds the documented example configs"
    for path in configs:
        load_config(path)
    assert load_config(Path(__file__).parent.parent / "configs" / "embedded.yaml") == Config()


def _numeric_keys():
    """Every numeric config field, as (dotted key, "int" or "float", list-valued): a list of floats counts as floats."""
    keys = []
    for section in [None, *dataclasses.fields(Config)]:
        cls = Config if section is None else typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = {hints[f.name], *typing.get_args(hints[f.name])}
            kinds |= {a for k in kinds for a in typing.get_args(k)}
            kind = "int" if int in kinds else "float" if float in kinds else None
            if kind and not dataclasses.is_dataclass(hints[f.name]) and typing.get_origin(hints[f.name]) is not Literal:
                is_list = any(typing.get_origin(k) in (list, tuple) for k in kinds)
                keys.append((f.name if section is None else f"{section.name}.{f.name}", kind, is_list))
    return keys


NUMERIC_KEYS = _numeric_keys()


def test_every_numeric_field_is_found():
    keys = {key: kind for key, kind, _ in NUMERIC_KEYS}
    assert len(keys) > 50 and keys["train.lr"] == "float" and keys["target.retries"] == "int"
    assert keys["data.mean"] == "float" and keys["search.budget_ms"] == "float" and "data.channels" not in keys


def test_list_valued_fields_are_found():
    assert {key for key, _, is_list in NUMERIC_KEYS if is_list} >= {"data.mean", "data.std", "search.landings"}


@pytest.mark.parametrize("key, kind, is_list", NUMERIC_KEYS)
def test_every_numeric_field_is_range_checked_naming_the_key(key, kind, is_list):
    # No numeric setting accepts a negative value, nor any setting NaN or infinity.
    wrap = (lambda text: f"[{text}]") if is_list else (lambda text: text)
    index = r"\[0\]" if is_list else ""
    must = f"--set: {key}{index} must be {'an integer' if kind == 'int' else 'a finite number'}"
    for value in (".nan", ".inf", "-.inf"):
        with pytest.raises(ConfigError, match=must):
            load_config(None, [f"{key}={wrap(value)}"])
    if key != "data.mean":  # a normalisation mean may be negative
        with pytest.raises(ConfigError, match=f"{must}.*got -1"):
            load_config(None, [f"{key}={wrap('-1')}"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.momentum=1"], r"train.momentum must be a finite number in \[0, 1\), got 1.0"),
        (["train.lr=0"], "train.lr must be a finite number > 0, got 0.0"),
        (["search.budget_ratio=1.5"], r"search.budget_ratio must be a finite number in \(0, 1\), got 1.5"),
        (["search.max_iterations=0"], "search.max_iterations must be an integer >= 1, got 0"),
        (["seed=4294967296"], r"seed must be an integer in \[0, 4294967295\]"),
        (["data.resolution=100000"], r"data.resolution must be an integer in \[8, 4096\]"),
        (["data.std=[0.5, 0]"], r"data.std\[1\] must be a finite number > 0, got 0.0"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_config_changed_in_python_is_checked_before_a_search(tmp_path):
    from netadapt.search import validate_search_config

    config = load_config(None, ["search.budget_ms=1"])
    check_ranges(config)
    # A changed copy is checked as it is made: every section validates itself.
    with pytest.raises(ConfigError, match="^search.decay must be a finite number in"):
        dataclasses.replace(config.search, decay=float("nan"))
    with pytest.raises(ConfigError, match="^measure.statistic must be one of"):
        dataclasses.replace(config.measure, statistic="mean")
    # A field assigned afterwards is caught before a search relies on it.
    config.search.decay = float("nan")
    with pytest.raises(ConfigError, match="config: search.decay must be a finite number in"):
        validate_search_config(config)


ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8)
)


def test_an_alias_bomb_in_a_config_is_refused_naming_the_file(tmp_path):
    # Once: 80 MB of stderr at 7 levels, as the whole value was quoted in "must be an integer, got [[[...".
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB + "train:\n  steps: *a7\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: its aliases expand to more than")
    assert len(str(error.value)) < 300


def test_long_values_are_quoted_short(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(f"train:\n  steps: {'9' * 50_000}x\n")
    with pytest.raises(ConfigError, match=r"train.steps must be an integer, got '9999.*\.\.\.$") as error:
        load_config(path)
    assert len(str(error.value).removeprefix(f"{path}: ")) < 150  # the temporary path's length varies
    path.write_text(f"train:\n  ? {'k' * 50_000}\n  : 1\n")  # an explicit key: a plain one stops at 1024
    with pytest.raises(ConfigError, match=r"unknown key 'train.kkkk.*\.\.\.; valid keys") as error:
        load_config(path)
    assert len(str(error.value)) < 1000
    with pytest.raises(ConfigError, match=r"--set 'train.steps': not valid YAML"):
        load_config(None, ["train.steps=[unclosed"])


def test_unreadable_config_files_name_the_file(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=f"{binary}: not UTF-8 text"):
        load_config(binary)
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text("train:\n  steps: 5\ntrain:\n  steps: 6\n")
    with pytest.raises(ConfigError, match=f"{repeated}: line 3: key 'train' is repeated"):
        load_config(repeated)
    odd_keys = tmp_path / "keys.yaml"
    odd_keys.write_text("1: a\nzz: b\n")  # keys of two types, which cannot be sorted together
    with pytest.raises(ConfigError, match=f"{odd_keys}: unknown key 1;"):
        load_config(odd_keys)


def test_config_errors_reach_the_cli_without_a_traceback(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x00\xff\xfe\x89")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB + "train:\n  steps: *a7\n")
    for path, message in ((binary, "not UTF-8 text"), (bomb, "its aliases expand")):
        done = subprocess.run([sys.executable, "-m", "netadapt.cli.main", "train", "--config", str(path),
                               "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and f"{path}: {message}" in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr) < 500
