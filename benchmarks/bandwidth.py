#!/usr/bin/env python
"""Memory bandwidth of the update's kernel, alone and with a second stream beside it.

The replicated update streams pop/2 table slices of dim float32 through
`NoiseTable.weighted_sum` (the trainer's own function). On a node every rank
does it at about the same moment, so the node's memory bandwidth, not one core,
sets its time. This script runs the kernel at the design point's size
(512 slices x 159,505 parameters = 327 MB read, 2^25-entry table in shared
memory, as the trainer holds it) in 1 process, and in 2 processes started
together on the same table, each pass begun together, interleaved. This
machine is shared, so it times each pass by the CPU clock (memory stalls count
as CPU time; descheduling does not) and keeps the fastest pass among those in
which every stream held its core throughout (CPU >= 90 % of wall).

    .venv/bin/python benchmarks/bandwidth.py          # ~1 minute

Writes benchmarks/results/bandwidth.json; design_point.py reads it for the
contention term of its cost model.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets one thread per process before numpy loads)
import numpy as np  # noqa: E402

TABLE = 1 << 25
DIM = 159_505      # Humanoid-v5, 256-256 MLP
DIRECTIONS = 512   # population 1,024, antithetic


def _stream(shm_name: str, start, repeats: int, out) -> None:
    from nes_mpi.noise import NOISE_DTYPE, NoiseTable

    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        table = np.ndarray((TABLE,), dtype=NOISE_DTYPE, buffer=shm.buf)
        noise = NoiseTable(table, 0)
        rng = np.random.default_rng(int(time.time_ns() % 1000))
        offsets = noise.offsets(7, DIRECTIONS, DIM)
        w = rng.standard_normal(DIRECTIONS)
        noise.weighted_sum(w, offsets, DIM)  # warm-up: fault the pages in
        times = []
        for _ in range(repeats):
            start.wait()  # the streams begin each pass together
            t, c = time.perf_counter(), time.process_time()
            noise.weighted_sum(w, offsets, DIM)
            times.append((time.perf_counter() - t, time.process_time() - c))
        out.put(times)
        del table, noise
    finally:
        shm.close()


def run(n_streams: int, shm_name: str, repeats: int) -> list[dict]:
    """Per pass: the slowest stream's wall and CPU seconds, and whether every stream held its core throughout
    (CPU >= 90 % of wall: then the streams really ran side by side, not one after the other)."""
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(n_streams)
    out = ctx.Queue()
    procs = [ctx.Process(target=_stream, args=(shm_name, start, repeats, out)) for _ in range(n_streams)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return [{"wall": max(r[i][0] for r in results), "cpu": max(r[i][1] for r in results),
             "alone_on_core": all(r[i][1] >= 0.9 * r[i][0] for r in results)} for i in range(repeats)]


def main() -> int:
    from nes_mpi.noise import NOISE_DTYPE, fill_chunks, n_chunks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--out", default="bandwidth")
    a = ap.parse_args()
    machine = common.machine_info()
    nbytes = DIRECTIONS * DIM * 4
    print(f"bandwidth: weighted_sum of {DIRECTIONS} slices x {DIM:,} float32 = {nbytes / 1e6:.0f} MB per pass; "
          f"{machine['cpu']}, {machine['nproc']} cpus, load {machine['loadavg_at_start'][0]:.2f}", flush=True)
    shm = shared_memory.SharedMemory(create=True, size=TABLE * 4)
    passes: dict[int, list[dict]] = {1: [], 2: []}

    def best(n: int) -> dict:
        """The fastest pass by CPU clock among those where every stream held its core (else among all)."""
        clean = [x for x in passes[n] if x["alone_on_core"]]
        return {**min(clean or passes[n], key=lambda x: x["cpu"]), "clean_passes": len(clean)}

    try:
        table = np.ndarray((TABLE,), dtype=NOISE_DTYPE, buffer=shm.buf)
        fill_chunks(table, 0, range(n_chunks(TABLE)))
        del table
        for r in range(a.rounds):
            for n in (1, 2):
                passes[n] += run(n, shm.name, a.repeats)
            print(f"  round {r + 1}/{a.rounds}: best CPU so far: 1 stream {best(1)['cpu'] * 1e3:.1f} ms, "
                  f"2 streams {best(2)['cpu'] * 1e3:.1f} ms ({best(2)['clean_passes']} clean passes), "
                  f"load {common.os.getloadavg()[0]:.1f}", flush=True)
    finally:
        shm.close()
        shm.unlink()
    top = {n: best(n) for n in passes}
    rate = {n: nbytes / top[n]["cpu"] for n in top}  # bytes per second of one stream
    result = {
        "benchmark": "bandwidth", "command": "python benchmarks/bandwidth.py " + " ".join(sys.argv[1:]),
        "machine": machine, "bytes_per_pass": nbytes, "directions": DIRECTIONS, "dim": DIM, "table": TABLE,
        "passes": {str(n): v for n, v in passes.items()},
        "best_pass": {str(n): v for n, v in top.items()},
        "per_stream_bytes_per_s": {str(n): v for n, v in rate.items()},
        "node_bytes_per_s": {str(n): n * v for n, v in rate.items()},
        "slowdown_2_streams": top[2]["cpu"] / top[1]["cpu"],
    }
    print(f"1 stream: {top[1]['cpu'] * 1e3:.1f} ms per pass (CPU clock; wall {top[1]['wall'] * 1e3:.1f}) "
          f"= {rate[1] / 1e9:.2f} GB/s")
    print(f"2 streams side by side: {top[2]['cpu'] * 1e3:.1f} ms per pass (wall {top[2]['wall'] * 1e3:.1f}) = "
          f"{rate[2] / 1e9:.2f} GB/s each, {2 * rate[2] / 1e9:.2f} GB/s together; slowdown x{result['slowdown_2_streams']:.2f}")
    common.write_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
