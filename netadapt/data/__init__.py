"""Datasets: load, convert, resize and normalise; in memory, or streamed from disk.

Every loader ends in the same `Dataset`: three `Split`s whose images are
float32 tensors `[N, C, H, W]`, already converted to the configured channel
count, resized to `resolution x resolution` and normalised, so that training
only indexes tensors (the training step, not data loading, dominates). A
folder too big for that (`data.cache`, `cache_mode`) keeps its file paths
instead, and is decoded batch by batch in worker processes
(`netadapt.data.stream`); the splits are the same images either way.

Sources (`DataConfig.dataset`):

- ``embedded``: a balanced Fashion-MNIST subset shipped in the package
  (`netadapt/data/fashion_mnist_subset.npz`, built by `build_embedded_subset`),
  so a fresh install runs without downloads.
- ``fashion-mnist``: the four idx files (gzipped or not), e.g. from
  `apt-get install dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist).
- ``cifar10``: the binary version (`data_batch_1..5.bin`, `test_batch.bin`).
- ``folder``: a class-per-folder tree of the user's images. PGM/PPM (binary,
  8-bit) and `.npy` decode without extra dependencies; PNG/JPEG/BMP need
  Pillow, the `images` extra (see `netadapt.data.images`).

NetAdapt decides on a *holdout* split carved, with a fixed seed, from the
training set; the test set is only for the final report (NetAdapt, Yang et al.
2018, §4: holdout sampled from the training set).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from netadapt.config import DataConfig
from netadapt.data.images import IMAGE_EXTENSIONS, read_image, to_tensor
from netadapt.data.stream import Conversion, ImageFiles
from netadapt.errors import ConfigError, DataError

__all__ = [
    "holdout_size",
    "CIFAR10_CLASSES",
    "EMBEDDED_PATH",
    "FASHION_MNIST_CLASSES",
    "Dataset",
    "ImageFiles",
    "Split",
    "cache_mode",
    "build_embedded_subset",
    "load_dataset",
    "read_idx",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Inside the installed package; pyproject's package-data ships `data/*.npz`.
EMBEDDED_PATH = Path(__file__).resolve().parent / "fashion_mnist_subset.npz"
AUTO_HOLDOUT_MIN, AUTO_HOLDOUT_MAX = 1000, 5000  # the automatic holdout's bounds (`holdout_size`)

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_HOWTO = (
    "install it with `apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist) "
    "or download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist"
)
_CIFAR_HOWTO = (
    "download and unpack the binary version, cifar-10-binary.tar.gz, from https://www.cs.toronto.edu/~kriz/cifar.html"
)
_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 R, 1024 G, 1024 B bytes


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous; compare by identity
class Split:
    """One split, ready to feed the model: decoded in memory, or streamed from its files.

    Attributes:
        images: float32 `[N, C, H, W]`, resized and normalised; or the same
            images as `ImageFiles` (data.cache=stream), which decode when
            indexed. Code that trains or scores goes through `batches`.
        labels: int64 `[N]`, class indices, always in memory.
    """

    images: torch.Tensor | ImageFiles
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def streamed(self) -> bool:
        """True when the images are files decoded per batch (data.cache=stream)."""
        return isinstance(self.images, ImageFiles)

    def subset(self, count: int) -> "Split":
        """The first `count` examples (a cheap view, for quick experiments and tests)."""
        if isinstance(self.images, ImageFiles):
            return Split(self.images.take(range(min(count, len(self)))), self.labels[:count])
        return Split(self.images[:count], self.labels[:count])

    def batches(self, index_batches: Iterable[slice | torch.Tensor], pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """The images of each index (a slice or positions) of `index_batches`, in order.

        In memory this indexes the tensor; streamed, worker processes decode
        the files a few batches ahead. Both give the same tensors.
        """
        if isinstance(self.images, ImageFiles):
            yield from self.images.batches(index_batches, pin_memory)
            return
        for index in index_batches:
            yield self.images[index]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train, holdout and test splits plus what a model needs to know about them."""

    train: Split  # training set minus the holdout
    holdout: Split  # NetAdapt's decisions use this split, never the test set
    test: Split  # only for the final report
    num_classes: int
    class_names: list[str]
    in_channels: int  # equals DataConfig.channels; the generator's in_channels follows it
    source: str  # where the data came from, for logs and run directories

    def summary(self) -> str:
        """One line for logs: where from, split sizes, image shape and classes."""
        resolution = self.train.images.shape[-1]
        return (f"{self.source}: {len(self.train)} train / {len(self.holdout)} holdout / {len(self.test)} test images, "
                f"{self.in_channels}x{resolution}x{resolution}, {self.num_classes} classes")


# ----------------------------------------------------------------- public API
def load_dataset(config: DataConfig) -> Dataset:
    """Load the configured dataset into memory and carve the holdout split.

    Args:
        config: which dataset, where, and how to present it (resolution,
            channels, normalisation, holdout size and split seed).

    Returns:
        The dataset; images are float32 `[N, channels, resolution, resolution]`.

    Raises:
        DataError: a file or folder is missing, corrupt or inconsistent; the
            message names it and says how to obtain the dataset.
        ConfigError: the configuration itself is inconsistent (e.g. the mean
            has the wrong number of entries, or the holdout is too large).
    """
    mean, std = _check_config(config)
    if config.cache == "stream" and config.dataset != "folder":
        raise ConfigError(
            f"data.cache=stream reads image files from disk, so it needs data.dataset=folder; {config.dataset} "
            "is held in memory (set data.cache to auto or memory)"
        )
    if config.dataset == "embedded":
        raw, class_names, source = _load_embedded(Path(config.path) if config.path else EMBEDDED_PATH)
    else:
        if not config.path:
            raise ConfigError(f"data.path is required for data.dataset={config.dataset!r} (a folder holding its files)")
        root = Path(config.path).expanduser()
        if config.dataset == "fashion-mnist":
            raw, class_names = _load_fashion_mnist(root), list(FASHION_MNIST_CLASSES)
        elif config.dataset == "cifar10":
            raw, class_names = _load_cifar10(root)
        else:
            raw, class_names = _load_folder(root, config)
        source = f"{config.dataset} at {root}"
    streamed = config.dataset == "folder" and cache_mode(config, sum(len(raw[split][1]) for split in raw)) == "stream"
    if streamed:
        source += f", streamed from disk ({config.workers} decoding workers)"

    (train_x, train_y), (test_x, test_y) = raw["train"], raw["test"]
    holdout = holdout_size(config, len(train_y))
    if holdout >= len(train_y):
        raise ConfigError(
            f"data.holdout={holdout} leaves no training images: the training set of {source} has {len(train_y)}"
        )
    # Fixed seeded permutation, independent of the training seed: the same
    # config always yields the same holdout, so searches are comparable.
    generator = torch.Generator().manual_seed(config.split_seed)
    order = torch.randperm(len(train_y), generator=generator)
    holdout_index, train_index = order[:holdout].sort().values, order[holdout:].sort().values

    def prepare(images: list[Path] | np.ndarray, labels: np.ndarray, index: torch.Tensor | None) -> Split:
        label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        if index is not None:
            images = [images[i] for i in index.tolist()] if isinstance(images, list) else images[index.numpy()]
            label_tensor = label_tensor[index]
        if streamed:  # a folder's file paths, decoded per batch
            conversion = Conversion(config.channels, config.resolution, tuple(mean), tuple(std))
            files = ImageFiles(tuple(str(path) for path in images), conversion, config.workers)
            return Split(files, label_tensor)
        if isinstance(images, list):  # a folder's file paths, decoded once, here
            images = [read_image(path) for path in images]
        tensor = to_tensor(images, config.channels, config.resolution, mean, std)
        return Split(tensor, label_tensor)

    return Dataset(
        train=prepare(train_x, train_y, train_index),
        holdout=prepare(train_x, train_y, holdout_index),
        test=prepare(test_x, test_y, None),
        num_classes=len(class_names),
        class_names=class_names,
        in_channels=config.channels,
        source=source,
    )


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Read an idx file (the MNIST format; gzipped when the name ends in .gz).

    Args:
        path: the file.
        expected_dims: 3 for images, 1 for labels.

    Raises:
        DataError: wrong magic number, wrong dimensionality, or a file shorter
            or longer than its header says.
    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error}); the file is corrupt or truncated") from None
    # Magic: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions.
    expected_magic = 0x0800 | expected_dims
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes, too short for an idx header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong idx magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {expected_dims} dimension{'s' if expected_dims > 1 else ''}); is this the right file?"
        )
    header = 4 + 4 * expected_dims
    if len(data) < header:
        raise DataError(f"{path}: truncated: the idx header needs {header} bytes, the file has {len(data)}")
    dims = struct.unpack(f">{expected_dims}I", data[4:header])
    size = int(np.prod(dims))
    if len(data) - header != size:
        what = "truncated" if len(data) - header < size else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: header says {'x'.join(map(str, dims))} = {size} bytes of data, found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def build_embedded_subset(
    source: str | Path,
    out: str | Path,
    train_per_class: int = 800,
    test_per_class: int = 200,
    seed: int = 0,
) -> Path:
    """Build the embedded Fashion-MNIST subset from the full idx files.

    The subset is balanced: exactly `train_per_class` training and
    `test_per_class` test images of each class, drawn with a seeded numpy
    generator, so the same source and arguments give a byte-identical array.

    Args:
        source: folder holding the four Fashion-MNIST idx files.
        out: the .npz to write (uint8 images `[N, 28, 28]`, uint8 labels).
        train_per_class: training images per class (from the official train set).
        test_per_class: test images per class (from the official test set).
        seed: seeds the choice of images.

    Returns:
        The path written.
    """
    from netadapt.io import atomic_write_bytes  # atomic: a kill leaves the old file
    import io

    raw = _load_fashion_mnist(Path(source))
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = raw[split]
        chosen = []
        for label in range(len(FASHION_MNIST_CLASSES)):
            candidates = np.flatnonzero(labels == label)
            if len(candidates) < per_class:
                raise DataError(f"{source}: class {label} has {len(candidates)} {split} images, need {per_class}")
            chosen.append(rng.choice(candidates, size=per_class, replace=False))
        index = np.sort(np.concatenate(chosen))  # keep the official order within the subset
        arrays[f"{split}_images"] = np.ascontiguousarray(images[index])
        arrays[f"{split}_labels"] = labels[index].astype(np.uint8)
    arrays["class_names"] = np.array(FASHION_MNIST_CLASSES)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    out = Path(out)
    atomic_write_bytes(out, buffer.getvalue())
    out.chmod(0o644)  # the package file must be world-readable once installed, whatever the umask
    return out


def cache_mode(config: DataConfig, images: int) -> str:
    """How a folder data set of `images` images is held: "memory" or "stream" (`data.cache`).

    "auto" streams when the decoded float32 images, `images x channels x
    resolution^2 x 4` bytes, would pass `data.memory_budget_gb`.
    """
    if config.cache != "auto":
        return config.cache
    decoded = images * config.channels * config.resolution**2 * 4
    return "stream" if decoded > config.memory_budget_gb * 1e9 else "memory"


def holdout_size(config: DataConfig, train_images: int) -> int:
    """`data.holdout`, or with null a twelfth of `train_images` kept within [1000, 5000].

    The holdout decides every iteration, so its noise is the search's: at
    1,000 images one candidate's top-1 has a standard error of about a
    point. Where the data allows, it grows (5,000 of Fashion-MNIST's 60,000).
    """
    if config.holdout is not None:
        return config.holdout
    return min(AUTO_HOLDOUT_MAX, max(AUTO_HOLDOUT_MIN, train_images // 12))


# ------------------------------------------------------------------- loaders
_Raw = dict[str, tuple[np.ndarray | list[Path], np.ndarray]]  # folder data: image paths, decoded later


def _check_config(config: DataConfig) -> tuple[list[float], list[float]]:
    if config.resolution < 8:
        raise ConfigError(f"data.resolution must be >= 8 pixels, got {config.resolution}")
    if config.holdout is not None and config.holdout < 1:
        raise ConfigError(f"data.holdout must be >= 1 (NetAdapt decides on it) or null (automatic), got {config.holdout}")
    stats = []
    for name, values in (("mean", config.mean), ("std", config.std)):
        if len(values) == 1:
            values = values * config.channels  # one value applies to every channel
        if len(values) != config.channels:
            raise ConfigError(
                f"data.{name} has {len(values)} values but data.channels is {config.channels}; give 1 or {config.channels}"
            )
        stats.append(list(values))
    if min(stats[1]) <= 0:
        raise ConfigError(f"data.std must be positive, got {config.std}")
    return stats[0], stats[1]


def _load_embedded(path: Path) -> tuple[_Raw, list[str], str]:
    if not path.is_file():
        raise DataError(
            f"{path}: embedded dataset missing; the package install is incomplete. "
            "Reinstall netadapt, or rebuild it with scripts/build_embedded_data.py"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            raw = {
                split: (archive[f"{split}_images"], archive[f"{split}_labels"].astype(np.int64))
                for split in ("train", "test")
            }
            class_names = [str(name) for name in archive["class_names"]]
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: not a valid embedded dataset archive ({error})") from None
    for split, (images, labels) in raw.items():
        _check_counts(path, split, images, labels, len(class_names))
    return raw, class_names, f"embedded Fashion-MNIST subset ({path.name})"


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root / (stem + '.gz')}: Fashion-MNIST file not found; {_FASHION_HOWTO}")


def _load_fashion_mnist(root: Path) -> _Raw:
    if not root.is_dir():
        raise DataError(f"{root}: Fashion-MNIST folder not found; {_FASHION_HOWTO}")
    raw: _Raw = {}
    for split, (image_stem, label_stem) in _FASHION_FILES.items():
        image_path, label_path = _find(root, image_stem), _find(root, label_stem)
        images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
        if len(images) != len(labels):
            raise DataError(
                f"{label_path}: {len(labels)} labels but {image_path.name} holds {len(images)} images; "
                "the two files must come from the same release"
            )
        _check_counts(label_path, split, images, labels, len(FASHION_MNIST_CLASSES))
        raw[split] = (images, labels.astype(np.int64))
    return raw


def _check_counts(path: Path, split: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if len(images) != len(labels):
        raise DataError(f"{path}: {split} split has {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{path}: {split} split is empty")
    if int(labels.max()) >= num_classes:
        raise DataError(f"{path}: label {int(labels.max())} out of range for {num_classes} classes")


def _load_cifar10(root: Path) -> tuple[_Raw, list[str]]:
    if (root / "cifar-10-batches-bin").is_dir():  # accept the folder the archive unpacks into, or its parent
        root = root / "cifar-10-batches-bin"
    if not root.is_dir():
        raise DataError(f"{root}: CIFAR-10 folder not found; {_CIFAR_HOWTO}")
    raw: _Raw = {}
    for split, names in (("train", [f"data_batch_{i}.bin" for i in range(1, 6)]), ("test", ["test_batch.bin"])):
        images, labels = [], []
        for name in names:
            path = root / name
            if not path.is_file():
                raise DataError(f"{path}: CIFAR-10 file not found; {_CIFAR_HOWTO}")
            data = np.fromfile(path, dtype=np.uint8)
            if len(data) == 0 or len(data) % _CIFAR_RECORD:
                raise DataError(
                    f"{path}: truncated or not a CIFAR-10 binary batch: {len(data)} bytes is not a whole number "
                    f"of {_CIFAR_RECORD}-byte records (1 label byte + 3072 pixel bytes)"
                )
            records = data.reshape(-1, _CIFAR_RECORD)
            if int(records[:, 0].max()) > 9:
                raise DataError(f"{path}: label byte {int(records[:, 0].max())} is not a CIFAR-10 class (0-9)")
            labels.append(records[:, 0].astype(np.int64))
            images.append(records[:, 1:].reshape(-1, 3, 32, 32))  # channel-planar, like our tensors
        raw[split] = (np.concatenate(images), np.concatenate(labels))
    class_names = list(CIFAR10_CLASSES)
    meta = root / "batches.meta.txt"
    if meta.is_file():
        names = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
        if len(names) == 10:
            class_names = names
    return raw, class_names


def _load_folder(root: Path, config: DataConfig) -> tuple[_Raw, list[str]]:
    """root/train/<class>/* and root/test/<class>/*; or root/<class>/* with a seeded test carve."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; expected {root}/<class>/<images> or {root}/train/<class>/...")
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise DataError(f"{root / 'test'}: folder not found; a tree with train/ also needs test/ (same classes)")
        train_x, train_y, class_names = _read_class_tree(root / "train", None)
        test_x, test_y, _ = _read_class_tree(root / "test", class_names)
        return {"train": (train_x, train_y), "test": (test_x, test_y)}, class_names
    images, labels, class_names = _read_class_tree(root, None)
    # No test folder: carve a test set of `holdout` images with another seed,
    # disjoint from the training set (and hence from the holdout).
    count = holdout_size(config, len(labels))
    if 2 * count >= len(labels):
        raise ConfigError(
            f"{root}: {len(labels)} images are too few to carve test and holdout sets of {count} each; "
            "lower data.holdout or add a test/ folder"
        )
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.split_seed + 1)).tolist()
    test, train = sorted(order[:count]), sorted(order[count:])
    return {
        "train": ([images[i] for i in train], labels[train]),
        "test": ([images[i] for i in test], labels[test]),
    }, class_names


def _read_class_tree(root: Path, class_names: list[str] | None) -> tuple[list[Path], np.ndarray, list[str]]:
    """The image files under root/<class>/, sorted, with their labels; nothing is decoded yet."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class folders; expected one sub-folder of images per class")
    names = [folder.name for folder in folders]
    if class_names is not None and names != class_names:
        raise DataError(f"{root}: class folders {names} differ from the training classes {class_names}")
    images: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        readable = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not readable:
            extra = f" ({len(files)} files of other types)" if files else ""
            raise DataError(
                f"{folder}: empty class folder{extra}; each class needs at least one image "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        for path in readable:
            images.append(path)
            labels.append(label)
    return images, np.array(labels, dtype=np.int64), names
