"""Checkpoints: the round trip, refusals, and the import of torchvision MobileNetV3 weights."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from mobilenetv3 import build
from netadapt.checkpoint import CHECKPOINT_FORMAT, CheckpointError, import_torchvision, load_checkpoint, save_checkpoint
from netadapt.cli.main import main
from netadapt.config import DataConfig, TrainConfig
from netadapt.data import Split, load_dataset
from netadapt.train import finetune


@pytest.fixture(scope="module")
def small_split() -> Split:
    return load_dataset(DataConfig()).train.subset(512)


def test_checkpoint_round_trip(tiny_spec, small_split, tmp_path):
    model = build(tiny_spec)
    finetune(model, small_split, 2, TrainConfig(batch_size=32, bn_recalibration=64, threads=1), seed=0)
    path = save_checkpoint(tmp_path / "run" / "base.pt", model)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT and isinstance(payload["spec"], str)
    loaded = load_checkpoint(path)
    assert loaded.spec == tiny_spec and not loaded.training
    model.eval()
    images = small_split.images[:8]
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_corrupt_checkpoint_is_refused(tiny_spec, tmp_path):
    path = save_checkpoint(tmp_path / "base.pt", build(tiny_spec))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"base\.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_foreign_and_missing_checkpoints_are_refused(tiny_spec, tmp_path):
    torch.save({"state_dict": build(tiny_spec).state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a netadapt checkpoint \(format None"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save(build(tiny_spec), tmp_path / "module.pt")  # a pickled module: weights_only refuses it
    with pytest.raises(CheckpointError, match=r"module\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match=r"absent\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize(
    "spec, message",
    [
        (7, "field 'spec' must be YAML text, got int"),
        ("blocks: [unclosed\n", "field 'spec': not valid YAML"),
        ("blocks: 5\n", r"field 'spec': spec is missing field\(s\)"),
        ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n" for i in range(1, 8)),
         "field 'spec': its aliases expand to more than"),
    ],
)
def test_a_checkpoint_whose_spec_is_not_a_spec_is_refused(tiny_spec, tmp_path, spec, message):
    payload = {"format": CHECKPOINT_FORMAT, "spec": spec, "state_dict": build(tiny_spec).state_dict()}
    torch.save(payload, tmp_path / "base.pt")
    with pytest.raises(CheckpointError, match=rf"base\.pt: {message}"):
        load_checkpoint(tmp_path / "base.pt")


# ------------------------------------------------------- torchvision import
def _import_torchvision():
    """torchvision, imported even where its compiled ops cannot load.

    PyPI's Linux torchvision wheels are built against CUDA torch; beside the
    CPU-only torch this project tests with, `torchvision._C` does not load,
    and the import then fails in `_meta_registrations` on two op schemas that
    `_C` would have defined (nms, qnms). Defining those two schemas lets the
    pure-Python models import; the MobileNetV3 models call none of the
    compiled ops. Where `_C` loads, the plain import succeeds and nothing is defined.
    """
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_torchvision.library = library  # keep the definitions alive
        import torchvision
    return torchvision


@pytest.fixture(scope="module")
def torchvision():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Failed to load image Python extension": not needed here
        return _import_torchvision()


def _torchvision_model(torchvision, preset: str, width: float, num_classes: int = 1000, seed: int = 0):
    """A random-initialised torchvision MobileNetV3 with non-trivial BatchNorm statistics (nothing downloaded)."""
    factory = {"large": torchvision.models.mobilenet_v3_large, "small": torchvision.models.mobilenet_v3_small}[preset]
    torch.manual_seed(seed)
    model = factory(width_mult=width, num_classes=num_classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("preset, width", [("large", 1.0), ("small", 1.0), ("small", 0.75)])
def test_an_imported_torchvision_model_gives_the_same_logits(torchvision, tmp_path, capsys, preset, width):
    reference = _torchvision_model(torchvision, preset, width)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    assert main(["model", "import", str(tmp_path / "tv.pth"), "--preset", preset, "--width", str(width),
                 "--out", str(tmp_path / "base.pt")]) == 0
    assert "--set model.checkpoint=" in capsys.readouterr().out
    imported = load_checkpoint(tmp_path / "base.pt")
    assert imported.spec.num_classes == 1000 and imported.spec.in_channels == 3
    for name, tensor in reference.state_dict().items():
        assert torch.equal(imported.state_dict()[name], tensor), name
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(images), imported(images)
    assert expected.abs().max() > 1e-3  # a network whose logits are all ~0 would prove nothing
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_import_with_other_classes_keeps_every_weight_but_the_last_layer(torchvision, tmp_path):
    reference = _torchvision_model(torchvision, "small", 1.0)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    imported = import_torchvision(tmp_path / "tv.pth", "small", num_classes=10, seed=3)
    assert imported.spec.num_classes == 10
    assert imported.head_output.weight.shape == (10, reference.classifier[3].in_features)
    for name, tensor in reference.state_dict().items():
        if not name.startswith("classifier.3."):
            assert torch.equal(imported.state_dict()[name], tensor), name
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(imported.forward_features(images), reference.features(images))
    again = import_torchvision(tmp_path / "tv.pth", "small", num_classes=10, seed=3)
    assert torch.equal(again.head_output.weight, imported.head_output.weight)  # the new layer is seeded


def test_a_search_base_can_come_from_imported_weights(torchvision, tmp_path):
    from netadapt.base import obtain_base_model
    from netadapt.config import load_config

    reference = _torchvision_model(torchvision, "small", 0.5, num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    save_checkpoint(tmp_path / "base.pt", import_torchvision(tmp_path / "tv.pth", "small", width=0.5))
    config = load_config(None, [f"model.checkpoint={tmp_path / 'base.pt'}", "data.channels=3", "data.mean=[0.5]"])
    dataset = load_dataset(config.data)
    model, path = obtain_base_model(config, dataset, progress=False, log=lambda line: None)
    assert path == tmp_path / "base.pt"
    with torch.no_grad():
        torch.testing.assert_close(model(dataset.test.images[:4]), reference(dataset.test.images[:4]))


@pytest.mark.parametrize(
    "preset, width, message",
    [  # the file is Small at width 1.0
        ("large", 1.0, r"key 'features\.1\.block\.1\.0\.weight' is missing from the file \(MobileNetV3-Large at "
                       r"width 1 has it with shape \[16, 16, 1, 1\]\); check --preset and --width"),
        ("small", 0.75, r"key 'features\.2\.block\.0\.0\.weight' has shape \[72, 16, 1, 1\] in the file but "
                        r"\[56, 16, 1, 1\] in MobileNetV3-Small at width 0\.75; check --preset and --width"),
    ],
)
def test_a_state_dict_that_does_not_fit_the_preset_is_refused_by_its_first_key(
        torchvision, tmp_path, capsys, preset, width, message):
    torch.save(_torchvision_model(torchvision, "small", 1.0).state_dict(), tmp_path / "tv.pth")
    assert main(["model", "import", str(tmp_path / "tv.pth"), "--preset", preset, "--width", str(width),
                 "--out", str(tmp_path / "base.pt")]) != 0
    error = capsys.readouterr().err
    assert "tv.pth: key" in error and "Traceback" not in error
    assert re.search(message, error), error
    assert not (tmp_path / "base.pt").exists()


def test_import_refuses_what_is_not_a_fitting_state_dict(torchvision, tiny_spec, tmp_path):
    state = _torchvision_model(torchvision, "small", 1.0).state_dict()
    cases = {
        "missing.pth": (None, r"missing\.pth: state dict file not found"),
        "list.pth": ([1, 2], r"list\.pth: expected a state dict .*got list"),
        "module.pth": (torch.nn.Linear(2, 2), r"module\.pth: not a readable torch file .*weights_only=True"),
        "own.pth": ("netadapt", r"own\.pth: already a netadapt checkpoint"),
        "short.pth": ({k: v for k, v in state.items() if k != "features.3.block.1.1.running_var"},
                      r"short\.pth: key 'features.3.block.1.1.running_var' is missing from the file"),
        "extra.pth": ({**state, "features.99.weight": torch.zeros(3)},
                      r"extra\.pth: key 'features.99.weight' \(shape \[3\]\) has no place in MobileNetV3-Small"),
        "text.pth": ({**state, "features.0.0.weight": "abc"}, r"text\.pth: entry 'features.0.0.weight' is str"),
    }
    for name, (payload, message) in cases.items():
        if payload == "netadapt":
            save_checkpoint(tmp_path / name, build(tiny_spec))
        elif payload is not None:
            torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            import_torchvision(tmp_path / name, "small")
    torch.save(state, tmp_path / "ok.pth")
    with pytest.raises(CheckpointError, match=r"--num-classes must be >= 1, got 0"):
        import_torchvision(tmp_path / "ok.pth", "small", num_classes=0)
