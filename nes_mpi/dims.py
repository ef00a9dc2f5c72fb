"""A strategy's tell computed on a contiguous range of the parameter dimensions.

After the fitnesses are shaped into per-direction weights (cheap, on every rank),
everything a tell does is elementwise over the dimensions: the weighted sums of
table slices, the optimizer step, the sigma update. What is not elementwise is a
handful of sums over all dimensions (ClipUp's norms, the logged gradient and step
norms, the mean sigma). So a tell can run on dims [lo, hi) given a `part`: where
its range lies, how a sum over the whole vector is formed from each range's
contribution (`total`), and how the ranges' new state vectors are put together
(`join`). `Whole` is the single-process part: one range holding everything.
The MPI layer has a node-shared one (comm.NodeSplit).

Sums are taken in fixed blocks of BLOCK dimensions and the per-block sums then
added in block order, and every range is made of whole blocks, so a sum has the
same bits however the dimensions are split.
"""
from __future__ import annotations

import numpy as np

BLOCK = 256  # dimensions per block of a sum; a range is whole blocks (Humanoid 256-256: 624 blocks)


def balanced_range(n: int, size: int, rank: int) -> range:
    """Contiguous, balanced slice of n items for `rank` (the first n % size ranks get one more)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return range(lo, lo + base + (1 if rank < extra else 0))


def n_blocks(dim: int) -> int:
    return (dim + BLOCK - 1) // BLOCK


def block_span(dim: int, size: int, rank: int) -> tuple[int, int, int]:
    """(lo, hi, first block) of part `rank` of `size`: a balanced run of whole blocks (possibly empty)."""
    blocks = balanced_range(n_blocks(dim), size, rank)
    return min(blocks.start * BLOCK, dim), min(blocks.stop * BLOCK, dim), blocks.start


def block_sums(values: np.ndarray) -> np.ndarray:
    """Per-block float64 sums of `values`, which start on a block boundary (the last block may be short)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if not values.size:
        return np.zeros(0)
    return np.add.reduceat(values, np.arange(0, values.size, BLOCK))


def total_of_blocks(sums: np.ndarray) -> float:
    """The whole vector's sum from all its per-block sums, added in block order."""
    return float(np.array(sums, dtype=np.float64).sum())


class Whole:
    """All dimensions in one range: a tell on one process."""

    def __init__(self, dim: int):
        self.dim, self.lo, self.hi = dim, 0, dim

    def total(self, *vectors: np.ndarray) -> tuple[float, ...]:
        """Sum over all dimensions of each vector (given on this part's range)."""
        return tuple(total_of_blocks(block_sums(v)) for v in vectors)

    def join(self, vectors: dict, sums: tuple = ()) -> tuple[dict, tuple[float, ...]]:
        """The new state vectors put together from every part's range, and `total(*sums)`."""
        return vectors, self.total(*sums)
