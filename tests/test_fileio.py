"""mobilenetv3.fileio and mobilenetv3.messages: atomic, durable writes with the umask's mode; bounded YAML;
JSON without repeated keys; short quotes of values in messages."""

from __future__ import annotations

import os
import stat

import pytest

from mobilenetv3 import fileio
from mobilenetv3.fileio import MAX_YAML_NODES, InputError, atomic_write_text, load_json, load_yaml, read_yaml
from mobilenetv3.messages import QUOTE_LIMIT, quote

# Half a kilobyte that a YAML parser expands to 10**9 leaves: each level holds ten aliases of the one above.
ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


@pytest.fixture
def umask():
    """Sets the process's umask for one test and restores it after."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "out.txt"
    atomic_write_text(path, "new\n")
    assert stat.S_IMODE(path.stat().st_mode) == mode, "an output has the mode any new file would have"
    atomic_write_text(path, "again\n")  # replacing a file: the same
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "again\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"], "no temporary file is left behind"


def test_atomic_writes_fsync_the_directory_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (events.append(
        "fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file"), real_fsync(fd))[1])
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    atomic_write_text(tmp_path / "sub" / "out.txt", "data")
    assert events == ["fsync file", "rename", "fsync dir"], "the rename is made durable by the directory's fsync"
    assert (tmp_path / "sub" / "out.txt").read_text() == "data"


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_an_alias_bomb_is_refused_at_load_naming_its_source():
    # Expanded, it would take minutes and gigabytes: it is refused while counting.
    with pytest.raises(InputError) as error:
        load_yaml(ALIAS_BOMB + "value: *a8\n", "bomb.yaml")
    message = str(error.value)
    assert message.startswith("bomb.yaml: ") and f"more than {MAX_YAML_NODES:,} YAML nodes" in message
    assert len(message) < 300


def test_aliases_within_the_bound_still_load():
    assert load_yaml("base: &b {lr: 0.1}\nother: *b\n", "ok.yaml") == {"base": {"lr": 0.1}, "other": {"lr": 0.1}}
    assert load_yaml("a: &a {x: 1}\nb:\n  <<: *a\n  y: 2\n", "merge.yaml")["b"] == {"x": 1, "y": 2}


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: 1\nb: 2\na: 3\n", "f.yaml: line 3: key 'a' is repeated"),
        ("&r [*r]\n", "f.yaml: a YAML alias refers to a node that contains it"),
        ("[" * 5000 + "]" * 5000, "f.yaml: YAML nests"),
        ("a: [unclosed\n", r"f.yaml: not valid YAML \("),
        ("a: !!python/object:os.system x\n", "f.yaml: not valid YAML"),  # the safe loader: no objects
    ],
)
def test_malformed_yaml_is_refused_naming_its_source(text, message):
    with pytest.raises(InputError, match=message):
        load_yaml(text, "f.yaml")


def test_a_binary_yaml_file_is_refused_as_not_text(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(InputError, match=f"{path}: not UTF-8 text"):
        read_yaml(path)
    with pytest.raises(FileNotFoundError):
        read_yaml(tmp_path / "absent.yaml")
    with pytest.raises(InputError, match=f"{tmp_path}: cannot read it"):
        read_yaml(tmp_path)  # a directory


def test_json_with_a_repeated_key_is_refused():
    assert load_json('{"a": 1, "b": {"a": 2}}', "s.json") == {"a": 1, "b": {"a": 2}}
    with pytest.raises(InputError, match="s.json: key 'a' is repeated"):
        load_json('{"a": 1, "a": 2}', "s.json")
    with pytest.raises(InputError, match="s.json: JSON nests too deeply"):
        load_json("[" * 100_000 + "]" * 100_000, "s.json")
    with pytest.raises(InputError, match=r"s.json: not valid JSON \("):
        load_json('{"a": ', "s.json")


def test_quote_keeps_a_short_prefix_of_any_value():
    assert quote("abc") == "'abc'" and quote(3) == "3" and quote(float("nan")) == "nan"
    long = quote("x" * 10_000)
    assert len(long) == QUOTE_LIMIT and long.startswith("'xxx") and long.endswith("...")
    # A structure that is huge only when expanded (10**10 leaves, shared 10 ways at each level): a whole
    # repr would never finish; the quote is built from a bounded part of it.
    bomb = ["x"] * 10
    for _ in range(9):
        bomb = [bomb] * 10
    assert len(quote(bomb)) <= QUOTE_LIMIT and len(quote(bomb, 200)) <= 200
    assert quote({"k" * 500: 1}).startswith("{'kkk") and len(quote({"k" * 500: 1})) == QUOTE_LIMIT
