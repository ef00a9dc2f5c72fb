"""The thin MPI layer: who evaluates which members, gathering in member order,
the node-shared noise table and update, and the cross-rank consistency check.

Only plain numpy buffers cross ranks (upper-case mpi4py calls); parameters are
never sent: every rank computes them.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from . import noise
from .dims import Whole, balanced_range, block_span, block_sums, n_blocks, total_of_blocks

member_range = balanced_range  # which members a rank evaluates


class DivergedError(RuntimeError):
    pass


def gather_rows(comm: MPI.Comm, local: np.ndarray, n_total: int) -> np.ndarray:
    """Allgatherv rows of a float64 (n_local, k) array; slices are contiguous, so rank order is member order."""
    local = np.ascontiguousarray(local, dtype=np.float64)
    k = local.shape[1]
    counts = np.array([len(member_range(n_total, comm.size, r)) * k for r in range(comm.size)])
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.empty((n_total, k), dtype=np.float64)
    comm.Allgatherv(local, [out, counts, displs, MPI.DOUBLE])
    return out


def gather_members(comm: MPI.Comm, local: np.ndarray, n_total: int, member_col: int,
                   seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allgatherv of member rows from whichever rank ran them, returned in member order.

    Row i of `local` is member local[i, member_col]. Returns (every row, row m = member m; the rank
    that ran each member; each rank's `seconds`). The rows are placed, not summed, so their bits
    are the ones their rank computed, whatever the assignment of members to ranks.
    """
    local = np.ascontiguousarray(local, dtype=np.float64)
    k = local.shape[1]
    per_rank = np.empty((comm.size, 2))
    comm.Allgather(np.array([len(local), seconds], dtype=np.float64), per_rank)
    rows_of = per_rank[:, 0].astype(np.int64)
    counts = rows_of * k
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = np.empty((int(rows_of.sum()), k), dtype=np.float64)
    comm.Allgatherv(local, [rows, counts, displs, MPI.DOUBLE])
    idx = rows[:, member_col].astype(np.int64)
    if len(idx) != n_total or not np.array_equal(np.bincount(idx, minlength=n_total), np.ones(n_total, np.int64)):
        raise RuntimeError(f"members were not each run exactly once ({len(idx)} rows for {n_total} members)")
    full = np.empty_like(rows)
    full[idx] = rows
    owner = np.empty(n_total, dtype=np.int64)
    owner[idx] = np.repeat(np.arange(comm.size), rows_of)
    return full, owner, per_rank[:, 1].copy()


def params_digest(theta: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(theta).tobytes()).digest()


def check_identical(comm: MPI.Comm, theta: np.ndarray, generation: int) -> None:
    """Compare a sha256 of the parameters across ranks; raise naming the ranks that differ from rank 0."""
    mine = np.frombuffer(params_digest(theta), dtype=np.uint8).copy()
    everyone = np.empty((comm.size, mine.size), dtype=np.uint8)
    comm.Allgather(mine, everyone)
    bad = [r for r in range(comm.size) if not np.array_equal(everyone[r], everyone[0])]
    if bad:
        raise DivergedError(f"parameters diverged at generation {generation}: ranks {bad} differ from rank 0")


def any_rank(comm: MPI.Comm, flag: bool) -> bool:
    return bool(comm.allreduce(int(flag), op=MPI.MAX))


STOP_TAG = 7507  # on the channel's own duplicated communicator, so it can never match another message


class StopChannel:
    """Spread a stop request to every rank while they are busy, and agree on it at one point per phase.

    A rank whose StopRequest is set sends one small message to every other rank, once (nonblocking);
    every rank probes for such messages between lockstep steps (`poll`, about a microsecond).
    `agree` is the collective after each rollout phase that turns "some rank asked" into the same
    decision on every rank. It waits nonblockingly and keeps polling, so a rank that finished its
    share early and is waiting still hears a signal and passes it on. `close` receives every message
    still in flight, so no rank finalizes MPI with unmatched messages.

    Messages are found with Iprobe and then received from their sender, never by a receive posted in
    advance with ANY_SOURCE: with MPICH 5.0 (UCX netmod) such a receive, pending while collectives
    run, let messages from another node sit unmatched for good once one from the same node had
    arrived, and every rank then waited in `close` forever (4 ranks on two real SLURM nodes, and
    under MPIR_CVAR_NUM_CLIQUES=2, when all of them got the signal).
    """

    def __init__(self, comm: MPI.Comm, stop):
        self.comm = comm.Dup()
        self.stop = stop
        self.heard_from: int | None = None  # the rank whose message told us first
        self.told = False
        self.received = 0
        self.sends: list = []
        self.inbox = np.zeros(1, dtype=np.int64)

    def _receive(self) -> bool:
        """Receive one stop message if one has arrived."""
        status = MPI.Status()
        if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=STOP_TAG, status=status):
            return False
        self.comm.Recv(self.inbox, source=status.Get_source(), tag=STOP_TAG)
        self.received += 1
        if self.heard_from is None:
            self.heard_from = int(self.inbox[0])
        return True

    def poll(self) -> bool:
        """True once a stop is requested here or on any rank that has told us; tells the others once."""
        if self.told or self.heard_from is not None:
            return True
        if self.stop.requested:
            mine = np.array([self.comm.rank], dtype=np.int64)
            self.sends = [self.comm.Isend(mine, dest=r, tag=STOP_TAG) for r in range(self.comm.size) if r != self.comm.rank]
            self.told = True
            return True
        return self._receive()

    def agree(self) -> bool:
        """Collective: True on every rank if any rank had a stop request by the time it got here."""
        mine = np.array([int(self.poll())], dtype=np.int32)
        out = np.zeros(1, dtype=np.int32)
        req = self.comm.Iallreduce(mine, out, op=MPI.MAX)
        while not req.Test():
            self.poll()  # a signal reaching a waiting rank is passed on at once
            time.sleep(0.0002)  # waiting ranks leave the cores to the ranks still stepping
        return bool(out[0])

    def reason(self) -> str:
        if self.stop.requested and self.heard_from is None:
            return self.stop.signal_name
        if self.heard_from is not None:
            return f"a signal to rank {self.heard_from}"
        return "a signal to another rank"

    def close(self) -> None:
        """Collective: drain the stop messages still in flight, then release the communicator."""
        told = self.comm.allgather(self.told)
        expected = sum(told) - int(self.told)
        while self.received < expected:
            if not self._receive():
                time.sleep(0.0002)
        MPI.Request.Waitall(self.sends)
        self.comm.Free()


class SharedNoise:
    """The noise table in MPI-3 shared memory: one copy per node, filled by all of the node's ranks."""

    def __init__(self, comm: MPI.Comm, size: int, seed: int):
        self.win = None
        self.node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
        itemsize = np.dtype(noise.NOISE_DTYPE).itemsize
        try:
            nbytes = size * itemsize if self.node.rank == 0 else 0
            self.win = MPI.Win.Allocate_shared(nbytes, itemsize, comm=self.node)
            buf, _ = self.win.Shared_query(0)
            table = np.ndarray(buffer=buf, dtype=noise.NOISE_DTYPE, shape=(size,))
        except MPI.Exception:  # no shared memory support: fall back to a private copy
            self.win = None
            table = np.empty(size, dtype=noise.NOISE_DTYPE)
            noise.fill_chunks(table, seed, range(noise.n_chunks(size)))
        else:
            mine = [j for j in range(noise.n_chunks(size)) if j % self.node.size == self.node.rank]
            noise.fill_chunks(table, seed, mine)
            self.node.Barrier()
        self.table = table

    def layout(self, comm: MPI.Comm) -> dict:
        """How the job holds the table, measured not assumed (collective over `comm`).

        `owners` are the world ranks whose memory holds a copy (a shared window's
        owner, or every rank with a private fallback copy); `resident_bytes` sums
        each rank's proportional share (PSS) of the memory mapping the table lies in,
        so it counts a node-shared copy once however many ranks touch it.
        """
        itemsize = np.dtype(noise.NOISE_DTYPE).itemsize
        owns = self.win is None or self.node.rank == 0
        leader = self.node.bcast(comm.rank, root=0)
        pss = mapping_pss(self.table.ctypes.data)
        rows = comm.allgather((leader, owns, pss))
        nodes: dict[int, list[int]] = {}
        for r, (lead, _, _) in enumerate(rows):
            nodes.setdefault(lead, []).append(r)
        return {
            "node_ranks": list(nodes.values()),
            "owners": [r for r, (_, own, _) in enumerate(rows) if own],
            "table_bytes": self.table.size * itemsize,
            "resident_bytes": None if any(p is None for *_, p in rows) else sum(p for *_, p in rows),
            "update_split": isinstance(getattr(self, "split", None), NodeSplit),
        }

    def noise_table(self, seed: int) -> noise.NoiseTable:
        return noise.NoiseTable(self.table, seed)

    def update_part(self, dim: int, vectors: list[str]):
        """Where this rank's tell runs: its range of the node's split (one per rank of a node with shared
        memory), or all dimensions (a node of one rank, or no shared memory)."""
        if self.win is None or self.node.size == 1:
            self.split = Whole(dim)
        else:
            self.split = NodeSplit(self.node, dim, vectors)
        return self.split

    def free(self):
        split = getattr(self, "split", None)
        if isinstance(split, NodeSplit):
            split.free()
        self.split = None
        if self.win is not None:
            self.table = None
            self.win.Free()
            self.win = None


class NodeSplit:
    """The update split over the ranks of a node: each computes its range of the dimensions (dims.py).

    Replicated on every rank, the update would make a node read the same table slices
    and optimizer moments once per rank, and then memory bandwidth, not the core, sets
    its time. Here rank i of the node runs the strategy's tell on its range of whole
    blocks: its part of the weighted sums, of the optimizer step and of the sigma
    update, written into node-shared state vectors. After one node barrier every rank's
    state is views of those vectors: the node holds one state, not one per rank, and
    no rank copies it. Each element is computed as on one process and every sum over
    the dimensions adds per-block sums in block order, so the bits are those of one
    process for any node layout.

    Two sets of state vectors alternate, so the tell writing generation g+1's state
    never overwrites generation g's, which every rank still reads as its input; the
    state of two tells ago is overwritten, so whoever keeps a state longer copies it
    (the trainer's snapshots do). The per-block sums alternate likewise. Collective
    over the node: every rank calls join and total the same times.
    """

    MAX_SUMS = 4  # sums formed at one barrier: the gradient and step norms and the mean sigma at most

    def __init__(self, node: MPI.Comm, dim: int, vectors: list[str]):
        self.node, self.dim = node, dim
        self.lo, self.hi, self.first_block = block_span(dim, node.size, node.rank)
        self.names = {name: i for i, name in enumerate(vectors)}
        self.blocks = n_blocks(dim)
        state_bytes = 2 * len(vectors) * dim * 4
        sums_at = -(-state_bytes // 8) * 8
        nbytes = sums_at + 2 * self.MAX_SUMS * self.blocks * 8
        self.win = MPI.Win.Allocate_shared(nbytes if node.rank == 0 else 0, 1, comm=node)
        buf, _ = self.win.Shared_query(0)
        self.states = np.ndarray(buffer=buf, dtype=np.float32, shape=(2, len(vectors), dim))
        self.sums = np.ndarray(buffer=buf, dtype=np.float64, shape=(2, self.MAX_SUMS, self.blocks), offset=sums_at)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self.joins = self.totals = 0

    def total(self, *vectors: np.ndarray) -> tuple[float, ...]:
        """Sum over all dimensions of each vector, given on this rank's range (collective over the node)."""
        if len(vectors) > self.MAX_SUMS:
            raise ValueError(f"at most {self.MAX_SUMS} sums per node barrier, got {len(vectors)}")
        rows = self.sums[self.totals % 2]
        self.totals += 1
        for i, v in enumerate(vectors):
            mine = block_sums(v)
            rows[i, self.first_block : self.first_block + mine.size] = mine
        self._everyone_wrote()
        return tuple(total_of_blocks(rows[i]) for i in range(len(vectors)))

    def join(self, vectors: dict, sums: tuple = ()) -> tuple[dict, tuple[float, ...]]:
        """Write my ranges of the new state vectors; every rank gets the whole vectors (collective)."""
        if set(vectors) != set(self.names):
            raise ValueError(f"a split tell must give every state vector {sorted(self.names)}, got {sorted(vectors)}")
        slot = self.states[self.joins % 2]
        self.joins += 1
        for name, v in vectors.items():
            if v.dtype != np.float32 or v.shape != (self.hi - self.lo,):
                raise ValueError(f"state vector {name!r}: {v.dtype} {v.shape}, expected float32 ({self.hi - self.lo},)")
            slot[self.names[name], self.lo : self.hi] = v
        totals = self.total(*sums)  # its barrier also publishes the state vectors
        return {name: slot[i] for name, i in self.names.items()}, totals

    def _everyone_wrote(self) -> None:
        self.win.Sync()
        self.node.Barrier()
        self.win.Sync()

    def free(self):
        self.states = self.sums = None
        self.win.Unlock_all()
        self.win.Free()


def mapping_pss(address: int) -> int | None:
    """PSS in bytes of this process's memory mapping that contains `address` (None off Linux)."""
    try:
        with open("/proc/self/smaps") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "Pss:":
            return int(line.split()[1]) * 1024
    return None


def slurm_world_mismatch(world_size: int) -> str | None:
    """A bare `srun` starts N one-rank copies: detect SLURM tasks > 1 with an MPI world of 1."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or ""
    if world_size == 1 and tasks.isdigit() and int(tasks) > 1:
        return (f"SLURM started {tasks} tasks but MPI sees a world of 1: srun is not wiring up MPI. "
                "Use `srun --mpi=pmi2` (MPICH) or `--mpi=pmix` (Open MPI), or launch with mpiexec")
    return None


ABORT_GRACE_SECONDS = 1.0


def abort(comm: MPI.Comm, code: int) -> None:
    """End the whole job from this rank, after giving the launcher time to forward what this rank printed.

    MPI_Abort makes mpiexec kill every process at once; what the failing rank wrote to stderr just before can
    still sit in the pipe to the launcher and be lost (seen in CI: a crash on rank 1 exited non-zero with an
    empty stderr). A second costs nothing next to a crash that nobody can read.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if comm.size > 1:
        time.sleep(ABORT_GRACE_SECONDS)
    comm.Abort(code)
