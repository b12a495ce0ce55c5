"""Samplers for iteration-based training and sharded evaluation.

:class:`IterationSampler` replaces ``DistributedSampler`` for training. It yields an endless,
deterministic stream of ``(index, seed)`` keys: the sample order comes from a per-epoch
permutation of ``(seed, epoch)`` and each sample's augmentation from ``(seed, position)``.
Global batch ``i`` is the same set of samples and augmentations whatever the number of
processes or DataLoader workers, and a resumed run starts exactly at the batch it stopped at
(``DistributedSampler`` is epoch-based, pads the data and cannot resume mid-epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class IterationSampler(Sampler):
    """Endless ``(index, (seed, position))`` keys for one rank of a data-parallel run.

    Global position ``p = iteration * batch_size * world_size + rank * batch_size + j`` walks
    through consecutive epoch permutations, so rank ``r`` gets the ``r``-th slice of every global
    batch, and one process with ``batch_size * world_size`` gets exactly the union.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
    ):
        if num_samples < 1:
            raise ValueError("IterationSampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.start_iteration = start_iteration
        self._cache: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 1:
                self._cache.pop(min(self._cache))
            rng = np.random.default_rng((self.seed, epoch))
            self._cache[epoch] = rng.permutation(self.num_samples)
        return self._cache[epoch]

    def key(self, position: int) -> tuple[int, tuple[int, int]]:
        """The dataset key of global stream position ``position``."""
        epoch, offset = divmod(position, self.num_samples)
        return int(self._permutation(epoch)[offset]), (self.seed, position)

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int]]]:
        global_batch = self.batch_size * self.world_size
        iteration = self.start_iteration
        while True:
            first = iteration * global_batch + self.rank * self.batch_size
            for position in range(first, first + self.batch_size):
                yield self.key(position)
            iteration += 1


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...``: every sample evaluated exactly once over all
    ranks (no padding duplicates, unlike ``DistributedSampler``), so summed confusion matrices
    are exact."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
