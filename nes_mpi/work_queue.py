"""Which members a rank runs: its static slice, or members taken one at a time from its node's queue.

A member's result depends only on its index (noise offset and episode seeds come from it), so who
runs it changes no bit of the run. With static slices the slowest rank sets the pace; with uneven
episode lengths (early terminations) that idle time grows with the rank count. `NodeWorkQueue`
hands out the node's members (the static slices of its ranks, so nodes keep shares in proportion
to their rank counts) through one counter in a node-shared MPI window; every take is an atomic
MPI Fetch_and_op, so no member is run twice or skipped. The queue never crosses a node, so no rank
waits on RMA progress of a rank on another node that is busy in its simulator.

A rank steps its members in lockstep (one batched policy forward per step), and a member once
started stays on its rank: the work still in flight when the queue runs dry is what ranks wait
for. So a rank runs at most `slots` members at once, and fewer as the queue empties: no more than
the unstarted members per rank of the node (rounded up), so that the last members spread over
ranks instead of piling onto whoever asked first.

A rank that has had a failed member in this generation takes no more than its static share: a
broken environment on one rank then fails as many members as with static slices, and does not
drain its node's queue.
"""
from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from .comm import member_range


class StaticSlice:
    """The rank's contiguous slice of the population, handed out in order."""

    def __init__(self, population: int, size: int, rank: int):
        self.members = member_range(population, size, rank)
        self.slots = len(self.members)  # all at once: nobody else would take them
        self._next = iter(())

    def start(self, generation: int) -> None:
        self._next = iter(self.members)

    def take(self, failed: int = 0, busy: int = 0) -> int | None:
        return next(self._next, None)

    def free(self) -> None:
        pass


class NodeWorkQueue:
    """The node's members, handed out in order by one atomic counter in a node-shared window.

    Collective over `node` (construction, `free`); `start` and `take` are local. Two counters
    alternate by generation parity: at the start of generation g node rank 0 zeroes the one of
    parity g + 1. That is safe without a barrier: every take of generation g - 1 came before its
    rank entered the Allgatherv that ended g - 1, and no rank takes in generation g + 1 before the
    Allgatherv that ends g, which node rank 0 enters after the zeroing.
    """

    def __init__(self, comm: MPI.Comm, node: MPI.Comm, population: int, slots: int):
        world = node.allgather(comm.rank)
        self.members = np.concatenate([np.arange(sl.start, sl.stop) for sl in
                                       (member_range(population, comm.size, r) for r in world)])
        self.share = len(member_range(population, comm.size, comm.rank))
        self.node = node
        self.slots = slots
        itemsize = np.dtype(np.int64).itemsize
        self.win = MPI.Win.Allocate_shared(2 * itemsize if node.rank == 0 else 0, itemsize, comm=node)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        if node.rank == 0:  # the window's memory starts undefined
            self._replace(0, 0)
            self._replace(1, 0)
            self.win.Flush(0)
        node.Barrier()
        self.one = np.ones(1, dtype=np.int64)
        self.got = np.zeros(1, dtype=np.int64)
        self.counter = 0
        self.taken = 0

    def _replace(self, disp: int, value: int) -> None:
        self.win.Fetch_and_op(np.array([value], dtype=np.int64), np.zeros(1, dtype=np.int64), 0, disp, MPI.REPLACE)

    def _fetch(self, op) -> int:
        self.win.Fetch_and_op(self.one, self.got, 0, self.counter, op)
        self.win.Flush(0)
        return int(self.got[0])

    def start(self, generation: int) -> None:
        self.counter = generation % 2
        self.taken = 0
        if self.node.rank == 0:
            self._replace(1 - self.counter, 0)
            self.win.Flush(0)

    def take(self, failed: int = 0, busy: int = 0) -> int | None:
        """The next member to run, or None: none left, or this rank may not start one now.

        `failed`: my failed members so far this generation; `busy`: my members still running (0: no limit,
        the first batch)."""
        n = len(self.members)
        if failed and self.taken >= self.share:
            return None
        if busy:
            left = n - self._fetch(MPI.NO_OP)
            if busy >= min(self.slots, math.ceil(left / self.node.size)):
                return None
        t = self._fetch(MPI.SUM)
        if t >= n:
            return None
        self.taken += 1
        return int(self.members[t])

    def free(self) -> None:
        self.win.Unlock_all()
        self.win.Free()


def work_for(schedule: str, comm: MPI.Comm, node: MPI.Comm | None, population: int, group: int):
    """The members this rank runs, and how many it steps in lockstep (`slots`).

    Static: the whole slice in one lockstep batch (members cannot move). Dynamic on a node of
    several ranks: batches of at most `group`, so that part of each slice is still unstarted when a
    faster neighbour comes looking for work. Without node-shared memory (node None) or alone on its
    node a rank has nobody to share with: static.
    """
    if schedule == "static" or node is None or node.size == 1:
        return StaticSlice(population, comm.size, comm.rank)
    share = len(member_range(population, comm.size, comm.rank))
    return NodeWorkQueue(comm, node, population, max(1, min(share, group)))
