"""Data loading: real files written to tmp_path, each error names the file and says what is wrong."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from netadapt.config import DataConfig
from netadapt.data import EMBEDDED_PATH, build_embedded_subset, holdout_size, load_dataset, read_idx
from netadapt.errors import ConfigError, DataError


# ------------------------------------------------------------------ writers
def write_idx(path: Path, array: np.ndarray, magic: int | None = None, cut: int = 0) -> Path:
    """An idx file (gzipped when the name ends in .gz); `cut` drops trailing bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">I", magic if magic is not None else 0x0800 | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    data = data[: len(data) - cut] if cut else data
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_fashion(root: Path, train: int = 40, test: int = 20, seed: int = 0) -> Path:
    """A miniature Fashion-MNIST: class k images have mean brightness ~ 20k."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = (labels[:, None, None] * 20 + rng.integers(0, 20, (count, 28, 28))).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_cifar(root: Path, per_batch: int = 10) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = (np.arange(per_batch) % 10).astype(np.uint8)
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        pixels[:, :1024] = 255  # red plane saturated: lets tests check channel order
        pixels[:, 1024:] = 0
        np.concatenate([labels[:, None], pixels], axis=1).tofile(root / name)
    return root


def write_pgm(path: Path, image: np.ndarray) -> None:
    height, width = image.shape
    path.write_bytes(b"P5\n# a comment\n%d %d\n255\n" % (width, height) + image.astype(np.uint8).tobytes())


def write_ppm(path: Path, image: np.ndarray) -> None:  # image: H x W x 3
    height, width, _ = image.shape
    path.write_bytes(b"P6\n%d %d\n255\n" % (width, height) + image.astype(np.uint8).tobytes())


def fashion_config(root: Path, **changes) -> DataConfig:
    return DataConfig(dataset="fashion-mnist", path=str(root), holdout=10, **changes)


# ---------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_loads_with_holdout_carved_from_train(tmp_path):
    data = load_dataset(fashion_config(write_fashion(tmp_path / "fm")))
    assert (len(data.train), len(data.holdout), len(data.test)) == (30, 10, 20)
    assert data.train.images.shape == (30, 1, 28, 28) and data.train.images.dtype == torch.float32
    assert data.train.labels.dtype == torch.int64
    assert data.num_classes == 10 and data.class_names[0] == "T-shirt/top" and data.in_channels == 1


def test_uncompressed_idx_files_are_accepted(tmp_path):
    root = write_fashion(tmp_path / "fm")
    for path in root.glob("*.gz"):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    assert len(load_dataset(fashion_config(root)).test) == 20


def test_wrong_idx_magic_names_the_file(tmp_path):
    root = write_fashion(tmp_path / "fm")
    bad = root / "train-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros((40, 28, 28)), magic=0x00000801)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: wrong idx magic number 0x00000801"):
        load_dataset(fashion_config(root))


def test_truncated_idx_file_is_reported(tmp_path):
    root = write_fashion(tmp_path / "fm")
    write_idx(root / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28)), cut=100)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: truncated: header says 20x28x28"):
        load_dataset(fashion_config(root))


def test_truncated_gzip_stream_is_reported(tmp_path):
    path = write_idx(tmp_path / "x-idx1-ubyte.gz", np.arange(100))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"x-idx1-ubyte\.gz: cannot read .*corrupt or truncated"):
        read_idx(path, 1)


def test_label_and_image_counts_must_match(tmp_path):
    root = write_fashion(tmp_path / "fm")
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(39) % 10)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: 39 labels but train-images-idx3-ubyte\.gz holds 40"):
        load_dataset(fashion_config(root))


def test_missing_fashion_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: Fashion-MNIST folder not found; .*apt-get install dataset-fashion-mnist"):
        load_dataset(fashion_config(tmp_path / "nowhere"))


def test_missing_fashion_file_is_named(tmp_path):
    root = write_fashion(tmp_path / "fm")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: Fashion-MNIST file not found"):
        load_dataset(fashion_config(root))


def test_path_is_required_for_file_datasets():
    with pytest.raises(ConfigError, match="data.path is required"):
        load_dataset(DataConfig(dataset="fashion-mnist"))


# ------------------------------------------------------------------- splits
def test_holdout_split_is_deterministic_and_disjoint(tmp_path):
    root = write_fashion(tmp_path / "fm", train=60)
    first, again = load_dataset(fashion_config(root)), load_dataset(fashion_config(root))
    assert torch.equal(first.holdout.images, again.holdout.images)
    assert torch.equal(first.train.labels, again.train.labels)
    # Every training image is unique (random noise), so rows identify images.
    train_rows = {tuple(row.tolist()) for row in first.train.images.flatten(1)}
    holdout_rows = {tuple(row.tolist()) for row in first.holdout.images.flatten(1)}
    assert len(train_rows) == 50 and len(holdout_rows) == 10 and not train_rows & holdout_rows
    other = load_dataset(fashion_config(root, split_seed=1))
    assert not torch.equal(other.holdout.images, first.holdout.images)


def test_the_automatic_holdout_grows_with_the_training_set():
    automatic = DataConfig()
    assert automatic.holdout is None
    # A twelfth of the training images, within [1000, 5000]: 5,000 of full Fashion-MNIST's 60,000.
    assert [holdout_size(automatic, n) for n in (8000, 24000, 60000, 600000)] == [1000, 2000, 5000, 5000]
    assert holdout_size(DataConfig(holdout=77), 60000) == 77  # an explicit size is kept


def test_holdout_larger_than_training_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.holdout=40 leaves no training images"):
        load_dataset(DataConfig(dataset="fashion-mnist", path=str(write_fashion(tmp_path / "fm")), holdout=40))


# ------------------------------------------------------ resolution, channels
def test_resolution_channels_and_normalisation_follow_the_config(tmp_path):
    root = write_fashion(tmp_path / "fm")
    gray = load_dataset(fashion_config(root, resolution=28, mean=[0.0], std=[1.0]))
    rgb = load_dataset(fashion_config(root, resolution=16, channels=3, mean=[0.0], std=[1.0]))
    assert rgb.train.images.shape == (30, 3, 16, 16) and rgb.in_channels == 3
    assert torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 2])  # gray repeated
    # Downscaling preserves the mean brightness (antialiased bilinear).
    assert torch.allclose(rgb.train.images.mean(dim=(1, 2, 3)), gray.train.images.mean(dim=(1, 2, 3)), atol=0.01)
    assert 0.0 <= float(gray.train.images.min()) and float(gray.train.images.max()) <= 1.0
    normalised = load_dataset(fashion_config(root, mean=[0.5], std=[0.25]))
    assert torch.allclose(normalised.train.images, (gray.train.images - 0.5) / 0.25, atol=1e-6)


def test_mean_with_wrong_length_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.mean has 2 values but data.channels is 3"):
        load_dataset(fashion_config(write_fashion(tmp_path / "fm"), channels=3, mean=[0.5, 0.5]))


# ------------------------------------------------------------------ CIFAR-10
def test_cifar10_loads_and_converts_rgb_to_luminance(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-bin")
    config = dict(dataset="cifar10", path=str(tmp_path), holdout=5, mean=[0.0], std=[1.0])
    rgb = load_dataset(DataConfig(channels=3, resolution=32, **config))
    assert (len(rgb.train), len(rgb.test)) == (45, 10) and rgb.class_names[0] == "airplane"
    assert torch.all(rgb.train.images[:, 0] == 1.0) and torch.all(rgb.train.images[:, 1:] == 0.0)
    gray = load_dataset(DataConfig(channels=1, resolution=32, **config))
    assert torch.allclose(gray.train.images, torch.full_like(gray.train.images, 0.299))


def test_truncated_cifar_batch_is_reported(tmp_path):
    root = write_cifar(tmp_path / "c")
    path = root / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"data_batch_3\.bin: truncated or not a CIFAR-10 binary batch"):
        load_dataset(DataConfig(dataset="cifar10", path=str(root), holdout=5))


def test_missing_cifar_file_says_how_to_get_it(tmp_path):
    root = write_cifar(tmp_path / "c")
    (root / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"test_batch\.bin: CIFAR-10 file not found; download .*cifar-10-binary"):
        load_dataset(DataConfig(dataset="cifar10", path=str(root), holdout=5))


# -------------------------------------------------------------- image folder
def write_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for name, value in (("cat", 30), ("dog", 200)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            if i % 3 == 0:
                write_pgm(folder / f"{i}.pgm", np.full((20, 24), value))
            elif i % 3 == 1:
                write_ppm(folder / f"{i}.ppm", np.full((12, 12, 3), value) + rng.integers(0, 2, (12, 12, 3)))
            else:
                np.save(folder / f"{i}.npy", np.full((16, 16), value, dtype=np.uint8))
    return root


def test_image_folder_reads_pgm_ppm_and_npy(tmp_path):
    root = write_folder(tmp_path / "pets")
    data = load_dataset(DataConfig(dataset="folder", path=str(root), holdout=2, resolution=8, mean=[0.0], std=[1.0]))
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    assert (len(data.train), len(data.holdout), len(data.test)) == (8, 2, 2)  # test carved like the holdout
    everything = torch.cat([data.train.images, data.holdout.images, data.test.images])
    labels = torch.cat([data.train.labels, data.holdout.labels, data.test.labels])
    assert everything.shape[1:] == (1, 8, 8)
    brightness = everything.mean(dim=(1, 2, 3))
    assert torch.all((brightness > 0.5) == (labels == 1))  # dogs are bright in every format


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    write_folder(tmp_path / "d" / "train")
    write_folder(tmp_path / "d" / "test", per_class=3)
    data = load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "d"), holdout=2, resolution=8, channels=3))
    assert (len(data.train) + len(data.holdout), len(data.test)) == (12, 6)
    assert data.train.images.shape[1] == 3


def test_empty_class_folder_is_named(tmp_path):
    root = write_folder(tmp_path / "pets")
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"pets/emu: empty class folder \(1 files of other types\)"):
        load_dataset(DataConfig(dataset="folder", path=str(root), holdout=2))


def test_missing_image_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=r"absent: image folder not found"):
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "absent"), holdout=2))


def test_png_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "pets")
    (root / "cat" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)  # import PIL now fails
    with pytest.raises(DataError, match=r"photo\.png: \.png images need Pillow: pip install .netadapt\[images\]."):
        load_dataset(DataConfig(dataset="folder", path=str(root), holdout=2))


def test_truncated_pgm_is_reported(tmp_path):
    root = write_folder(tmp_path / "pets")
    path = root / "dog" / "0.pgm"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"dog/0\.pgm: truncated: 24x20x1 needs 480 pixel bytes, found 470"):
        load_dataset(DataConfig(dataset="folder", path=str(root), holdout=2))


# ----------------------------------------------------------------- embedded
def test_embedded_subset_loads_balanced_with_the_right_shapes():
    assert EMBEDDED_PATH.is_file()
    data = load_dataset(DataConfig())  # the default: no path, no download
    assert data.source.startswith("embedded Fashion-MNIST")
    assert data.train.images.shape == (7000, 1, 28, 28) and len(data.holdout) == 1000
    assert data.test.images.shape == (2000, 1, 28, 28)
    train_counts = torch.bincount(torch.cat([data.train.labels, data.holdout.labels]), minlength=10)
    assert train_counts.tolist() == [800] * 10
    assert torch.bincount(data.test.labels, minlength=10).tolist() == [200] * 10
    # A seeded random holdout of 1000 is roughly balanced too (each class 100 +- 40).
    assert torch.bincount(data.holdout.labels, minlength=10).min() >= 60


def test_embedded_subset_builder_is_reproducible_and_balanced(tmp_path):
    root = write_fashion(tmp_path / "fm", train=100, test=50)
    first = build_embedded_subset(root, tmp_path / "a.npz", train_per_class=4, test_per_class=2, seed=3)
    second = build_embedded_subset(root, tmp_path / "b.npz", train_per_class=4, test_per_class=2, seed=3)
    with np.load(first) as a, np.load(second) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert np.array_equal(a[key], b[key])
        assert np.bincount(a["train_labels"]).tolist() == [4] * 10
        assert a["train_images"].dtype == np.uint8
    data = load_dataset(DataConfig(path=str(first), holdout=5))
    assert (len(data.train), len(data.test)) == (35, 20)


# ----------------------------------------------------------------- streaming
def write_png_folder(root: Path, per_class: int = 10) -> Path:
    """A folder of RGB PNGs of different sizes, one class dark and one bright, with noise to tell images apart."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for label, (name, value) in enumerate((("cat", 40), ("dog", 190))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (14 + i % 5, 12 + i % 3)
            pixels = np.clip(value + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")
    return root


def folder_config(root: Path, **overrides) -> DataConfig:
    settings = dict(dataset="folder", path=str(root), holdout=4, resolution=12, channels=3, split_seed=3)
    return DataConfig(**{**settings, **overrides})


def test_streamed_folder_gives_the_same_splits_as_in_memory(tmp_path):
    root = write_png_folder(tmp_path / "pets")
    held = load_dataset(folder_config(root, cache="memory"))
    streamed = load_dataset(folder_config(root, cache="stream", workers=0))
    assert not held.train.streamed and streamed.train.streamed and "streamed from disk" in streamed.source
    for name in ("train", "holdout", "test"):
        in_memory, from_disk = getattr(held, name), getattr(streamed, name)
        assert torch.equal(in_memory.labels, from_disk.labels), name
        assert from_disk.images.shape == tuple(in_memory.images.shape), name
        assert torch.equal(in_memory.images, from_disk.images[:]), name  # decoded on demand, pixel for pixel


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_training_batches_equal_the_in_memory_ones(tmp_path, workers):
    from netadapt.train import _batches

    root = write_png_folder(tmp_path / "pets")
    held = load_dataset(folder_config(root, cache="memory")).train
    streamed = load_dataset(folder_config(root, cache="stream", workers=workers)).train
    draws = [_batches(split, 5, torch.Generator().manual_seed(11), padding=2, flip=True) for split in (held, streamed)]
    for step in range(4):  # more than one epoch of 12 images: the reshuffle and the read-ahead line up too
        (memory_images, memory_labels), (disk_images, disk_labels) = next(draws[0]), next(draws[1])
        assert torch.equal(memory_labels, disk_labels), step
        assert torch.equal(memory_images, disk_images), step
    for draw in draws:
        draw.close()  # shuts the decoding workers down


def test_a_finetune_on_streamed_data_matches_one_in_memory(tmp_path):
    from netadapt.config import TrainConfig
    from netadapt.train import finetune
    from mobilenetv3 import build, small

    root = write_png_folder(tmp_path / "pets")
    spec = small(width=0.25, num_classes=2, in_channels=3)
    config = TrainConfig(batch_size=4, threads=1)
    weights = []
    for cache in ("memory", "stream"):
        data = load_dataset(folder_config(root, cache=cache, workers=1))
        model = build(spec, seed=0)
        finetune(model, data.train, steps=3, config=config, seed=5)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_auto_streams_a_folder_over_the_memory_budget(tmp_path):
    root = write_png_folder(tmp_path / "pets")
    # 20 images of 3x12x12 float32 are 34,560 bytes decoded: over 30 kB, under 40 kB.
    assert load_dataset(folder_config(root, memory_budget_gb=30e-6)).train.streamed
    assert not load_dataset(folder_config(root, memory_budget_gb=40e-6)).train.streamed


def test_stream_is_refused_for_data_held_in_memory():
    with pytest.raises(ConfigError, match=r"data.cache=stream .* needs data.dataset=folder; embedded"):
        load_dataset(DataConfig(cache="stream"))


def test_a_stream_stopped_early_leaves_the_next_one_right(tmp_path):
    root = write_png_folder(tmp_path / "pets")
    held = load_dataset(folder_config(root, cache="memory")).train
    streamed = load_dataset(folder_config(root, cache="stream", workers=2)).train
    abandoned = streamed.batches(iter([[0, 1], [2, 3], [4, 5], [6, 7]]))
    next(abandoned)  # the workers have decoded batches ahead that nobody takes
    abandoned.close()
    wanted = [[5, 4, 3], [11], [0, 9]]
    for index, batch in zip(wanted, streamed.batches(iter(wanted))):  # the same worker processes, reset
        assert torch.equal(batch, held.images[index])


def test_a_corrupt_file_met_while_streaming_is_named(tmp_path):
    root = write_folder(tmp_path / "pets")
    path = root / "dog" / "3.pgm"
    path.write_bytes(path.read_bytes()[:-10])
    data = load_dataset(DataConfig(dataset="folder", path=str(root), holdout=2, cache="stream", workers=1))
    with pytest.raises(DataError, match=r"dog/3\.pgm: truncated") as caught:  # found by a worker, raised here
        for split in (data.train, data.holdout, data.test):
            for _ in split.batches([slice(0, len(split))]):
                pass
    assert "Traceback" not in str(caught.value)  # the worker's message, not DataLoader's wrapped traceback


def test_idle_decoding_pools_are_bounded_and_their_workers_stop(tmp_path):
    import multiprocessing

    from netadapt.data import stream

    root = write_png_folder(tmp_path / "pets")
    stream.close_decoding_pools()
    before = set(multiprocessing.active_children())  # other tests' workers may still be referenced
    for resolution in (8, 10, 12):  # three settings, three pools: the oldest is dropped, its worker stopped
        split = load_dataset(folder_config(root, cache="stream", workers=1, resolution=resolution)).train
        assert next(split.batches(iter([[0, 1]]))).shape == (2, 3, resolution, resolution)
    assert len(stream._POOLS) == stream.MAX_POOLS
    assert len(set(multiprocessing.active_children()) - before) == stream.MAX_POOLS  # one worker each
    stream.close_decoding_pools()
    assert not stream._POOLS and not set(multiprocessing.active_children()) - before
