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

__all__ = ["ImageFiles"]


@dataclass(frozen=True)
class ImageFiles:
    """The images of one split as files: indexing decodes them, `batches` decodes in worker processes.

    Attributes:
        paths: one file per image, in the split's order.
        channels, resolution, mean, std: how each image is converted (`decode`).
        workers: decoding processes for `batches`; 0 decodes in this process.
    """

    paths: tuple[str, ...]
    channels: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    workers: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape the decoded split would have, `[N, C, H, W]`."""
        return (len(self.paths), self.channels, self.resolution, self.resolution)

    def take(self, index: Sequence[int]) -> "ImageFiles":
        """The images at `index`, still as files."""
        return ImageFiles(tuple(self.paths[i] for i in index), self.channels, self.resolution, self.mean, self.std,
                          self.workers)

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
        batches ahead of what has been yielded.
        """
        if self.workers == 0:
            for index in index_batches:
                batch = self._stack(self._positions(index))
                yield batch.pin_memory() if pin_memory else batch
            return
        loader = torch.utils.data.DataLoader(
            _Decoding(self), batch_sampler=_Batches(self._positions(index) for index in index_batches),
            num_workers=self.workers,
            pin_memory=pin_memory, worker_init_fn=_one_thread, prefetch_factor=2,
            # The loader draws its workers' base seed from this generator; without
            # one it would draw from torch's global one and shift the dropout
            # masks of the training it feeds (decoding itself is not random).
            generator=torch.Generator().manual_seed(0),
        )
        yield from loader

    def _decode(self, position: int) -> torch.Tensor:
        return decode(self.paths[position], self.channels, self.resolution, list(self.mean), list(self.std))

    def _stack(self, positions: Iterable[int]) -> torch.Tensor:
        images = [self._decode(int(i)) for i in positions]
        if not images:
            return torch.empty((0, self.channels, self.resolution, self.resolution))
        return torch.stack(images)


class _Decoding(torch.utils.data.Dataset):
    """The map-style dataset a DataLoader worker decodes from: position -> image tensor."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.files._decode(position)


class _Batches:
    """An iterable of index lists for `DataLoader(batch_sampler=...)`, which needs only `__iter__`."""

    def __init__(self, index_batches: Iterable[Sequence[int]]) -> None:
        self.index_batches = index_batches

    def __iter__(self) -> Iterator[list[int]]:
        for index in self.index_batches:
            yield [int(i) for i in index]


def _one_thread(worker_id: int) -> None:
    # Each worker decodes one image at a time; torch's default thread pool per
    # worker would oversubscribe the cores the training process is using.
    torch.set_num_threads(1)
