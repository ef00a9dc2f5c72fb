#!/usr/bin/env python
"""The update at the design point, replicated on every rank (before) and split over a node's ranks (after).

Design point: Humanoid-v5 256-256 (159,505 parameters), population 1,024 (512
antithetic directions), OpenAIES with Adam and weight decay, a 2^25 noise table.

  one process   `OpenAIES.tell` on all parameters (what every rank did before), and on
                the range that rank 0 of a node of R ranks computes (R = 2, 64), with a
                stand-in part whose sums and join stay in the process (so no barrier):
                the per-rank work; split into its weighted sum, its optimizer step and
                the rest, for the cost model (cost_model.py reads this file)
  MPI           the trainer's own `SharedNoise` and `NodeSplit` under
                `MPIR_CVAR_NUM_CLIQUES=K mpiexec -n 2`: one node of 2 ranks (split) against
                2 nodes of 1 rank (replicated), per-rank time of a tell, and a node barrier

Times are the median of the process CPU clock (and the wall clock) over repeats: the
machine is shared, and the CPU clock is what a dedicated core would take.

    .venv/bin/python benchmarks/node_split.py        # ~2 minutes on 2 loaded cores

Writes benchmarks/results/node_split.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets one thread per process before numpy loads)
import numpy as np  # noqa: E402

DIM = 159_505
POPULATION = 1024
TABLE = 1 << 25
SEED = 0
REPEATS = 9


def strategy(noise):
    from nes_mpi.optimizers import Adam
    from nes_mpi.strategies import OpenAIES, Sampling

    return OpenAIES(Sampling(noise, DIM, POPULATION), 0.02, Adam(0.01), weight_decay=0.005)


class RangeAlone:
    """Rank `rank` of a node of `size`: its range of the dimensions, sums and join kept in this process."""

    def __init__(self, size: int, rank: int):
        from nes_mpi.dims import Whole, block_span

        self.lo, self.hi, _ = block_span(DIM, size, rank)
        self.total = Whole(self.hi - self.lo).total

    def join(self, vectors, sums=()):
        return vectors, self.total(*sums)


def timed_tells(nes, state, part, repeats: int = REPEATS) -> dict:
    """Median CPU and wall seconds of a tell (fresh fitnesses and generation each time)."""
    rng = np.random.default_rng(7)
    fits = [rng.standard_normal(POPULATION) for _ in range(repeats + 1)]
    it = iter(range(repeats + 1))
    return common.timed(lambda: nes.tell(state, 100 + next(it), fits[0], part), repeats)


def one_process() -> dict:
    """The per-rank work of a tell: all parameters, and rank 0's range of a node of 2 and of 64 ranks."""
    from nes_mpi.noise import NoiseTable, make_table

    noise = NoiseTable(make_table(TABLE, SEED), SEED)
    nes = strategy(noise)
    state = nes.init(np.random.default_rng(0).standard_normal(DIM).astype(np.float32) * 0.1)
    offsets = nes.sampling.directions(5)
    w = np.random.default_rng(1).standard_normal(offsets.size)
    out = {}
    for size in (1, 2, 64):
        part = RangeAlone(size, 0)
        n = part.hi - part.lo
        opt = {k[4:]: (v[part.lo : part.hi] if np.ndim(v) else v) for k, v in state.items() if k.startswith("opt_")}
        grad = np.random.default_rng(2).standard_normal(n)
        theta = state["mean"][part.lo : part.hi]
        row = {"ranks_per_node": size, "dims": n,
               "tell": timed_tells(nes, state, part),
               "weighted_sum": common.timed(lambda: noise.weighted_sum_over(w, offsets, part.lo, part.hi), REPEATS),
               "optimizer_step": common.timed(lambda: nes.optimizer.step(opt, theta, grad, part.total), REPEATS)}
        row["rest"] = {c: row["tell"][c] - row["weighted_sum"][c] - row["optimizer_step"][c] for c in ("cpu", "wall")}
        out[str(size)] = row
        print(f"  one process, rank 0 of {size:2d}: {n:7,} dims: tell {row['tell']['cpu'] * 1e3:7.2f} ms CPU "
              f"(weighted sum {row['weighted_sum']['cpu'] * 1e3:6.2f}, optimizer {row['optimizer_step']['cpu'] * 1e3:5.2f}, "
              f"rest {row['rest']['cpu'] * 1e3:5.2f})", flush=True)
    return out


def worker() -> None:
    """Under mpiexec: the trainer's shared table and update part; each rank's median tell and barrier time."""
    import time

    from mpi4py import MPI

    from nes_mpi.comm import SharedNoise

    comm = MPI.COMM_WORLD
    shared = SharedNoise(comm, TABLE, SEED)
    nes = strategy(shared.noise_table(SEED))
    state = nes.init(np.random.default_rng(0).standard_normal(DIM).astype(np.float32) * 0.1)
    part = shared.update_part(DIM, [k for k, v in state.items() if np.ndim(v)])
    rng = np.random.default_rng(7)
    cpu, wall, barrier = [], [], []
    for r in range(REPEATS + 1):
        fitness = rng.standard_normal(POPULATION)
        comm.Barrier()
        w, c = time.perf_counter(), time.process_time()
        state, _ = nes.tell(state, 100 + r, fitness, part)
        if r:
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
        w = time.perf_counter()
        shared.node.Barrier()
        barrier.append(time.perf_counter() - w)
    rows = comm.gather({"node_size": shared.node.size, "split": part.hi - part.lo < DIM,
                        "dims": part.hi - part.lo, "tell_cpu": common.median(cpu), "tell_wall": common.median(wall),
                        "node_barrier_wall": min(barrier)}, root=0)
    shared.free()
    if comm.rank == 0:
        print(json.dumps(rows))


def under_mpi(nodes: int, ranks: int) -> list[dict]:
    env = {**__import__("os").environ, "MPIR_CVAR_NUM_CLIQUES": str(nodes)}
    proc = subprocess.run([common.MPIEXEC, "-n", str(ranks), common.PYTHON, __file__, "--worker"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=common.REPO)
    if proc.returncode:
        raise SystemExit(f"worker failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    if ap.parse_args().worker:
        worker()
        return 0
    machine = common.machine_info()
    print(f"node split of the update: {DIM:,} parameters, population {POPULATION:,}, table 2^25, CPU clock, "
          f"median of {REPEATS}", flush=True)
    result = {"benchmark": "node_split", "command": "python benchmarks/node_split.py", "machine": machine,
              "dim": DIM, "population": POPULATION, "one_process": one_process(), "mpi": {}}
    common.no_mpi_init()
    for nodes, what in ((2, "replicated: 2 emulated nodes of 1 rank"), (1, "split: 1 node of 2 ranks")):
        rows = under_mpi(nodes, 2)
        result["mpi"][f"{nodes}_nodes_2_ranks"] = {"what": what, "ranks": rows}
        print(f"  mpiexec -n 2, {what}: tell per rank " + ", ".join(
            f"{r['tell_cpu'] * 1e3:.2f} ms CPU / {r['tell_wall'] * 1e3:.2f} ms wall ({r['dims']:,} dims)" for r in rows)
            + f"; node barrier {min(r['node_barrier_wall'] for r in rows) * 1e6:.0f} us", flush=True)
    op = result["one_process"]
    result["speedup_cpu"] = {"rank_of_2": op["1"]["tell"]["cpu"] / op["2"]["tell"]["cpu"],
                             "rank_of_64": op["1"]["tell"]["cpu"] / op["64"]["tell"]["cpu"]}
    print(f"per-rank tell, CPU: x{result['speedup_cpu']['rank_of_2']:.2f} less work at 2 ranks per node, "
          f"x{result['speedup_cpu']['rank_of_64']:.1f} at 64 (one process)")
    common.write_result("node_split", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
