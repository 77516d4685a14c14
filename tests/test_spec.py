import dataclasses

import pytest

from mobilenetv3 import BlockSpec, NetSpec, count, large, make_divisible, small


@pytest.mark.parametrize(
    "value, divisor, expected",
    [(16, 8, 16), (5.6, 8, 8), (12, 8, 16), (60, 8, 64), (72 // 4, 8, 24), (100, 8, 104), (3, 8, 8), (27, 16, 32)],
)
def test_make_divisible(value, divisor, expected):
    assert make_divisible(value, divisor) == expected


def test_make_divisible_never_rounds_down_more_than_ten_percent():
    for value in range(1, 2000):
        assert make_divisible(value, 8) >= 0.9 * value


@pytest.mark.parametrize(
    "factory, params, madds_millions",
    [(large, 5_483_032, 216.6), (small, 2_542_856, 56.5)],
)
def test_preset_counts_match_torchvision(factory, params, madds_millions):
    rows = count(factory(), 224)
    assert sum(r.params for r in rows) == params
    assert round(sum(r.macs for r in rows) / 1e6, 1) == madds_millions


@pytest.mark.parametrize("factory", [large, small])
@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.35])
def test_spec_round_trips_through_dict_and_yaml(factory, width):
    spec = factory(width=width, num_classes=10, in_channels=1)
    assert NetSpec.from_dict(spec.to_dict()) == spec
    assert NetSpec.from_yaml(spec.to_yaml()) == spec
    assert NetSpec.from_yaml(spec.to_yaml()).to_yaml() == spec.to_yaml()


def test_spec_save_and_load(tmp_path, tiny_spec):
    path = tmp_path / "spec.yaml"
    tiny_spec.save(path)
    assert NetSpec.load(path) == tiny_spec


def test_presets_follow_the_paper_tables():
    spec = large()
    assert [b.expanded for b in spec.blocks] == [16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960]
    # torchvision adds an expansion conv only when exp != in; only Large's first block lacks one.
    assert [b.has_expansion for b in spec.blocks] == [False] + [True] * 14
    assert [b.residual for b in spec.blocks] == [True, False, True, False, True, True, False, True, True, True, False, True, False, True, True]
    assert spec.last_conv == 960 and spec.head_hidden == 1280
    assert small().last_conv == 576 and small().head_hidden == 1024
    assert [b.se_squeeze for b in small().blocks][:2] == [8, 0]


def _with_block(spec, index, **changes):
    blocks = list(spec.blocks)
    blocks[index] = dataclasses.replace(blocks[index], **changes)
    return blocks


@pytest.mark.parametrize(
    "index, changes, message",
    [
        (1, {"kernel": 4}, "block 1: kernel must be odd"),
        (2, {"stride": 3}, "block 2: stride must be 1 or 2"),
        (1, {"out": 0}, "block 1: out must be >= 1"),
        (1, {"expanded": -8}, "block 1: expanded must be >= 1"),
        (2, {"activation": "gelu"}, "block 2: activation must be one of"),
        (2, {"out": 24}, r"block 2: residual block's in \(16\) and out \(24\) channels differ"),
        (2, {"stride": 2}, "block 2: residual block must have stride 1"),
        (0, {"expanded": 16}, r"block 0: has_expansion is false, so expanded \(16\)"),
        (1, {"se": True, "se_squeeze": 0}, "block 1: se_squeeze must be >= 1"),
        (1, {"se_squeeze": 8}, "block 1: se_squeeze must be 0 when se is false"),
        (1, {"has_expansion": "yes"}, "block 1: has_expansion must be true or false"),
    ],
)
def test_validation_names_block_and_field(tiny_spec, index, changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny_spec, blocks=_with_block(tiny_spec, index, **changes))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"stem": 0}, "stem must be >= 1"),
        ({"num_classes": 0}, "num_classes must be >= 1"),
        ({"dropout": 1.5}, "dropout must be a number in"),
        ({"blocks": ()}, "at least one block"),
        ({"last_conv": 2.5}, "last_conv must be an integer"),
    ],
)
def test_validation_of_net_fields(tiny_spec, changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny_spec, **changes)


def test_from_dict_rejects_unknown_and_missing_fields(tiny_spec):
    data = tiny_spec.to_dict()
    data["blocks"][1]["colour"] = "red"
    with pytest.raises(ValueError, match=r"block 1: unknown field\(s\) \['colour'\]"):
        NetSpec.from_dict(data)
    data = tiny_spec.to_dict()
    del data["blocks"][2]["kernel"]
    with pytest.raises(ValueError, match=r"block 2: missing field\(s\) \['kernel'\]"):
        NetSpec.from_dict(data)
    data = tiny_spec.to_dict()
    del data["stem"]
    with pytest.raises(ValueError, match="missing field"):
        NetSpec.from_dict(data)


def test_load_names_the_file(tmp_path, tiny_spec):
    path = tmp_path / "bad.yaml"
    data = tiny_spec.to_yaml().replace("kernel: 5", "kernel: 6")
    path.write_text(data)
    with pytest.raises(ValueError, match=f"{path}: block 2: kernel must be odd"):
        NetSpec.load(path)


def test_pruned_block_keeps_its_flags():
    # A block whose expanded width was cut down to its input width keeps its expansion conv.
    spec = large()
    pruned = spec.replace_block(1, expanded=16)
    assert pruned.blocks[1].has_expansion and pruned.blocks[1].expanded == pruned.block_inputs()[1]


def test_block_spec_is_frozen(tiny_spec):
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_spec.blocks[0].kernel = 5  # type: ignore[misc]
    assert isinstance(tiny_spec.blocks[0], BlockSpec)


@pytest.mark.parametrize(
    "index, changes, message",
    [
        (1, {"expanded": 10**9}, "block 1: expanded must be <= 16384 channels, got 1000000000"),
        (1, {"kernel": 1000001}, "block 1: kernel must be <= 15 pixels, got 1000001"),
        (2, {"se_squeeze": 10**6}, "block 2: se_squeeze must be <= 16384 channels"),
        (1, {"stride": 1.0}, "block 1: stride must be 1 or 2, got 1.0"),
        (1, {"activation": "x" * 10_000}, r"block 1: activation must be one of .*, got 'xxxx.*\.\.\.$"),
    ],
)
def test_absurd_block_values_are_refused_by_bound(tiny_spec, index, changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny_spec, blocks=_with_block(tiny_spec, index, **changes))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"stem": 10**9}, "stem must be <= 16384 channels"),
        ({"head_hidden": 16385}, "head_hidden must be <= 16384 channels"),
        ({"num_classes": 10**7}, "num_classes must be <= 100000 classes"),
        ({"dropout": False}, "dropout must be a number in"),  # a bool is no number, though Python calls it an int
        ({"name": ["a list"]}, "name must be text"),
    ],
)
def test_absurd_net_values_are_refused_by_bound(tiny_spec, changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny_spec, **changes)


def test_realistic_specs_stay_within_the_bounds():
    # Width 8 of Large, ImageNet-21k's classes: wide, but not absurd.
    spec = large(width=8.0, num_classes=21_841)
    assert max(b.expanded for b in spec.blocks) <= 16384
    with pytest.raises(ValueError, match="must be <= 16384 channels"):
        large(width=20.0)


ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


def test_spec_files_are_read_within_bounds(tmp_path, tiny_spec):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB + tiny_spec.to_yaml().replace("name: tiny", "name: *a8"))
    with pytest.raises(ValueError, match=f"{bomb}: its aliases expand to more than") as error:
        NetSpec.load(bomb)
    assert len(str(error.value)) < 300
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xd8\xff\xe0 a jpeg")
    with pytest.raises(ValueError, match=f"{binary}: not UTF-8 text"):
        NetSpec.load(binary)
    with pytest.raises(ValueError, match="field 'spec': expected YAML text, got int"):
        NetSpec.from_yaml(7, where="field 'spec'")  # type: ignore[arg-type]
    odd = tmp_path / "odd.yaml"
    odd.write_text(tiny_spec.to_yaml() + "1: x\n")  # a key of another type than the fields' names
    with pytest.raises(ValueError, match=rf"{odd}: unknown spec field\(s\) \[1\]"):
        NetSpec.load(odd)
