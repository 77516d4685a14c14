"""Folder images streamed from disk: the file list in memory, each batch decoded when it is needed.

At 224x224x3 a decoded float32 image is 600 KB, so 50,000 images need 30 GB;
`data.cache: stream` keeps only their paths. A batch is decoded by a torch
`DataLoader` whose worker processes (`data.workers`) read, resize and
normalise the files; the batch's indices are drawn in the training process,
so a streamed split gives the same batches as the same split held in memory.
Random crops and flips are applied after, on the decoded batch, with the
run's generator (see `netadapt.train`): cheap tensor work, done once per
batch rather than per image, and identical between the two ways of holding data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from netadapt.data.images import decode
from netadapt.errors import DataError

__all__ = ["Conversion", "ImageFiles", "close_decoding_pools"]


@dataclass(frozen=True)
class Conversion:
    """How one file becomes a normalised tensor (`decode`'s settings): shared by this process and the workers."""

    channels: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def decode(self, path: str) -> torch.Tensor:
        return decode(path, self.channels, self.resolution, list(self.mean), list(self.std))


@dataclass(frozen=True)
class ImageFiles:
    """The images of one split as files: indexing decodes them, `batches` decodes in worker processes.

    Attributes:
        paths: one file per image, in the split's order.
        conversion: how each image is decoded, resized and normalised.
        workers: decoding processes for `batches`; 0 decodes in this process.
    """

    paths: tuple[str, ...]
    conversion: Conversion
    workers: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape the decoded split would have, `[N, C, H, W]`."""
        c = self.conversion
        return (len(self.paths), c.channels, c.resolution, c.resolution)

    def take(self, index: Sequence[int]) -> "ImageFiles":
        """The images at `index`, still as files."""
        return ImageFiles(tuple(self.paths[i] for i in index), self.conversion, self.workers)

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Decode the images at `index` in this process: `[N, C, H, W]` (`[C, H, W]` for an int)."""
        if isinstance(index, int):
            return self._decode(index)
        return self._stack(self._positions(index))

    def _positions(self, index: slice | torch.Tensor | Sequence[int]) -> Sequence[int]:
        return range(len(self))[index] if isinstance(index, slice) else [int(i) for i in index]

    def batches(self, index_batches: Iterable[slice | Sequence[int]], pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """Decode each batch of `index_batches`, in order, in `workers` processes (prefetching ahead).

        `index_batches` may be endless; it is read in this process, a few
        batches ahead of what has been yielded. Stopping early is fine: the
        batches decoded ahead are dropped when the pool is next used.

        Raises:
            DataError: a file cannot be decoded; the message names it.
        """
        if self.workers == 0:
            for index in index_batches:
                batch = self._stack(self._positions(index))
                yield batch.pin_memory() if pin_memory else batch
            return
        paths = (self._paths_at(index) for index in index_batches)
        yield from _pool(self.workers, self.conversion, pin_memory).decode(paths)

    def _paths_at(self, index: slice | Sequence[int]) -> list[str]:
        return [self.paths[i] for i in self._positions(index)]

    def _decode(self, position: int) -> torch.Tensor:
        return self.conversion.decode(self.paths[position])

    def _stack(self, positions: Iterable[int]) -> torch.Tensor:
        images = [self._decode(int(i)) for i in positions]
        if not images:
            return torch.empty((0, *self.shape[1:]))
        return torch.stack(images)


@dataclass(frozen=True)
class _Failed:
    """A file a worker could not decode; sent back as data so the message reaches the caller intact."""

    message: str


class _Decoding(torch.utils.data.Dataset):
    """What a pool's workers index: a file path in, its image tensor (or a `_Failed`) out."""

    def __init__(self, conversion: Conversion) -> None:
        self.conversion = conversion

    def __len__(self) -> int:  # the "indices" are paths, fed by `_Feed`: there is no fixed length
        raise TypeError("a decoding pool is indexed by path")

    def __getitem__(self, path: str) -> torch.Tensor | _Failed:
        try:
            return self.conversion.decode(path)
        except DataError as error:
            return _Failed(str(error))


def _stack_or_failure(images: list[torch.Tensor | _Failed]) -> torch.Tensor | _Failed:
    for image in images:
        if isinstance(image, _Failed):
            return image
    return torch.stack(images)


class _Feed:
    """The pool's `batch_sampler`: yields the path batches of whichever `decode` call is running."""

    def __init__(self) -> None:
        self.batches: Iterator[list[str]] = iter(())

    def __iter__(self) -> Iterator[list[str]]:
        return self.batches


class _DecodingPool:
    """Worker processes kept alive between fine-tunes, each decoding whole batches of files.

    A search fine-tunes dozens of candidates on the same split; starting
    workers for each would cost seconds every time. The workers are spawned,
    not forked: a forked worker keeps the pages its parent had at the fork,
    and as the trainer reuses its heap those become the worker's own copies,
    which doubled the streamed benchmark's memory.
    """

    def __init__(self, workers: int, conversion: Conversion, pin_memory: bool) -> None:
        self.feed = _Feed()
        self.busy = False
        self.loader = torch.utils.data.DataLoader(
            _Decoding(conversion), batch_sampler=self.feed, num_workers=workers, collate_fn=_stack_or_failure,
            pin_memory=pin_memory, worker_init_fn=_one_thread, prefetch_factor=2, persistent_workers=True,
            multiprocessing_context="spawn",
            # The loader draws its workers' base seed from this generator; without
            # one it would draw from torch's global one and shift the dropout
            # masks of the training it feeds (decoding itself is not random).
            generator=torch.Generator().manual_seed(0),
        )

    def decode(self, path_batches: Iterator[list[str]]) -> Iterator[torch.Tensor]:
        """The decoded batches of `path_batches`, in order; one call at a time per pool."""
        if self.busy:
            raise RuntimeError("a decoding pool serves one batch stream at a time; finish or close the other first")
        self.busy, self.feed.batches = True, path_batches
        try:
            for batch in self.loader:
                if isinstance(batch, _Failed):
                    raise DataError(batch.message)
                yield batch
        finally:
            self.busy = False


# One run uses one pool (its splits share the conversion); a process that goes on
# to other settings keeps the latest few, each worker being ~0.2 GB of Python and torch.
MAX_POOLS = 2
_POOLS: dict[tuple[int, Conversion, bool], _DecodingPool] = {}


def _pool(workers: int, conversion: Conversion, pin_memory: bool) -> _DecodingPool:
    """This process's pool for these settings; a second stream while it is busy gets a pool of its own."""
    key = (workers, conversion, pin_memory)
    pool = _POOLS.pop(key, None)
    if pool is not None and pool.busy:
        _POOLS[key] = pool
        return _DecodingPool(workers, conversion, pin_memory)  # lives as long as the stream using it
    _POOLS[key] = pool or _DecodingPool(workers, conversion, pin_memory)  # now the most recently used
    for stale in [k for k, p in _POOLS.items() if not p.busy][: max(0, len(_POOLS) - MAX_POOLS)]:
        del _POOLS[stale]  # the last reference: its loader shuts its workers down
    return _POOLS[key]


def close_decoding_pools() -> None:
    """Stop this process's idle decoding workers (they start again when a stream needs them)."""
    for key in [k for k, pool in _POOLS.items() if not pool.busy]:
        del _POOLS[key]


def _one_thread(worker_id: int) -> None:
    # Each worker decodes one image at a time; torch's default thread pool per
    # worker would oversubscribe the cores the training process is using.
    torch.set_num_threads(1)
