"""The config-key reference: generated from netadapt/config.py, complete, and the README's copy current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from netadapt.cli.main import main
from netadapt.config import Config, to_dict
from netadapt.config_keys import README_BEGIN, README_END, config_keys, markdown_table, with_table

README = Path(__file__).resolve().parents[1] / "README.md"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def test_every_key_is_listed_once_in_config_order_with_its_default():
    keys = config_keys()
    defaults = _flatten(to_dict(Config()))  # the loader's own view of the defaults
    assert [k.key for k in keys] == list(defaults)
    by_key = {k.key: k for k in keys}
    assert by_key["search.budget_ms"].default == "null" and by_key["search.depth_proposals"].default == "true"
    assert by_key["data.mean"].default == "[0.5]" and by_key["search.initial_reduction"].default == "0.05"
    assert by_key["search.score"].allowed == "`accuracy`, `loss`"  # a Literal's choices
    assert by_key["search.budget_ratio"].allowed == "(0, 1)"  # the section's RANGES


def test_every_key_has_a_meaning_taken_from_its_comment():
    missing = [k.key for k in config_keys() if not k.meaning]
    assert not missing, f"add a comment beside these fields in netadapt/config.py: {missing}"
    by_key = {k.key: k for k in config_keys()}
    # Comment lines above a field and the comment on its line are both taken, in order.
    assert by_key["search.budget_margin"].meaning.startswith("The last iteration's target is clamped")
    assert by_key["train.lr"].meaning == "peak learning rate (SGD with Nesterov momentum, cosine decay)"


def test_a_pipe_in_a_cell_does_not_break_the_table():
    row = dataclasses.replace(config_keys()[0], meaning="a | b")
    assert markdown_table([row]).splitlines()[-1].endswith("a \\| b |")


def test_the_readme_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert text.count(README_BEGIN) == 1 and text.count(README_END) == 1
    assert with_table(text, "README.md") == text, (
        "the README's config-key table is stale: run `netadapt config keys --update README.md`"
    )


def test_the_command_prints_the_table_and_updates_a_file(tmp_path, capsys):
    assert main(["config", "keys"]) == 0
    assert capsys.readouterr().out.strip() == markdown_table()
    document = tmp_path / "doc.md"
    document.write_text(f"# Doc\n\n{README_BEGIN}\nold table\n{README_END}\n\nafter\n")
    assert main(["config", "keys", "--update", str(document)]) == 0
    updated = document.read_text()
    assert "old table" not in updated and markdown_table() in updated and updated.endswith(f"{README_END}\n\nafter\n")


def test_a_file_without_the_markers_or_missing_is_refused_and_left_alone(tmp_path, capsys):
    document = tmp_path / "doc.md"
    document.write_text("no markers here\n")
    assert main(["config", "keys", "--update", str(document)]) == 2
    err = capsys.readouterr().err
    assert f"{document}: no config-key block" in err and "Traceback" not in err
    assert document.read_text() == "no markers here\n"
    assert main(["config", "keys", "--update", str(tmp_path / "absent.md")]) == 2
    assert "absent.md: no such file" in capsys.readouterr().err
