import pytest

from netadapt.config import Config, apply_overrides, load_config
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
