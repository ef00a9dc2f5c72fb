#!/usr/bin/env python
"""The cost model with memory-bandwidth contention, from 64 to 8,192 ranks.

design_point.py measures one rank's generation on one idle core. On a node all
ranks run the replicated update at the same moment, so they share the node's
memory bandwidth. This script takes the measured components (design_point.json,
scaling.json, bandwidth.json), measures the two kernels whose cost grows with
the population (the weighted sum's per-direction and per-byte cost, the
centered ranks) and models a generation at P ranks, 64 ranks per node,
population = members per rank x P, for Humanoid-v5 256-256 and
HalfCheetah-v5 64-64, with the update replicated on every rank, with only the
weighted sum split over the node (each rank sums 1/64 of the dimensions, then
copies the whole sum and runs the optimizer on all of them), and with the whole
tell split over the node (comm.NodeSplit, the trainer now; its per-rank kernel is
measured by node_split.py).

Assumptions (stated, not measured here):
  * a 64-core node sustains NODE_BW = 150 GB/s of memory reads (one socket of
    a 64-core EPYC: 8 channels DDR4-3200 = 204.8 GB/s peak, ~75 % sustained);
    one stream runs at the rate measured here (bandwidth.json) until the node's
    bandwidth divided by the streaming ranks is lower;
  * networks as in design_point.py (IB HDR100 class, 10 GbE), ring Allgatherv;
  * rollouts at the measured per-member-step cost: Humanoid upright 244 us
    (design_point.json), HalfCheetah 34.7 us with the policy (scaling.json),
    1,000-step episodes, no early terminations, no idle ranks.

    .venv/bin/python benchmarks/node_split.py && .venv/bin/python benchmarks/cost_model.py   # ~20 s
    .venv/bin/python benchmarks/cost_model.py --design-point design_point_previous --out cost_model_previous

Writes benchmarks/results/cost_model.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets one thread per process before numpy loads)
import numpy as np  # noqa: E402

NODE_BW = 150e9
RANKS_PER_NODE = 64
RANK_COUNTS = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
MEMBERS_PER_RANK = [2, 4, 8]
ADAM_BYTES_PER_DIM = 48
STATE_VECTORS = 3  # the hash check covers mean, opt_m and opt_v (design_point.json times the sha256 of the mean)  # float64 grad, m, v, the update; float32 theta in and out: read + written once each


def load(name: str) -> dict:
    return json.loads((common.RESULTS / f"{name}.json").read_text())


def measure_kernels() -> dict:
    """Per-direction and per-byte cost of NoiseTable.weighted_sum, and centered_ranks(pop), CPU clock, best of 5."""
    from nes_mpi.noise import NoiseTable, make_table
    from nes_mpi.shaping import centered_ranks

    noise = NoiseTable(make_table(1 << 24, 0), 0)
    rng = np.random.default_rng(0)

    def best(fn, n=5):
        ts = []
        for _ in range(n):
            c = time.process_time()
            fn()
            ts.append(time.process_time() - c)
        return min(ts)

    out = {}
    for dim in (64, 159_505):
        offs = noise.offsets(1, 2048 if dim == 64 else 256, dim)
        w = rng.standard_normal(offs.size)
        out[dim] = best(lambda: noise.weighted_sum(w, offs, dim)) / offs.size
    per_direction = out[64]  # the loop's own cost: 64 floats are nothing
    per_byte = (out[159_505] - per_direction) / (159_505 * 4)
    ranks = {}
    for pop in (1024, 8192, 65536):
        f = rng.standard_normal(pop)
        ranks[pop] = best(lambda: centered_ranks(f))
    return {"weighted_sum_per_direction_s": per_direction, "weighted_sum_per_byte_s": per_byte,
            "centered_ranks_s": ranks}


def tasks(dpj: dict, scj: dict) -> dict:
    cpu = dpj["components"]["cpu"]
    upright = dpj["analysis"]["cpu"]["per_member_step_s"]["upright"] if "analysis" in dpj else 244e-6
    hc = scj["model"]["components"]["1"]
    hc_members = hc["members"]
    return {
        "Humanoid-v5 256-256": {"dim": 159_505, "obs_dim": 348, "per_member_step": upright,
                                "policy_forward": cpu["policy_forward"], "reset": cpu["reset"],
                                "ask_per_member": cpu["ask"] / common.MEMBERS},
        "HalfCheetah-v5 64-64": {"dim": 5_702, "obs_dim": 17, "per_member_step": hc["cpu"]["rollout"] / (hc_members * 1000),
                                 "policy_forward": None, "reset": 0.0, "ask_per_member": hc["cpu"]["ask"] / hc_members},
    }


MODES = ("replicated", "cooperative_sum", "node_split")
# replicated: every rank runs the whole update (nes_mpi before the node-cooperative sum);
# cooperative_sum: the node's ranks split the weighted sum, every rank copies it and runs the optimizer step on all
#   parameters (the trainer until the node split);
# node_split: the node's ranks split the whole tell (comm.NodeSplit, the trainer now): no copy, state node-shared.


def split_kernel(ns: dict) -> dict:
    """The node split's per-rank work beyond the weighted sum, from node_split.json (one process, CPU clock):
    a fixed part (shaping, offsets, Python; centered ranks are counted apart) and a per-parameter part (optimizer
    step, weight decay, block sums), fitted through the tells on all 159,505 parameters and on 1/64 of them."""
    op = ns["one_process"]
    whole, part = op["1"], op["64"]
    per_dim = (whole["rest"]["cpu"] + whole["optimizer_step"]["cpu"] - part["rest"]["cpu"]
               - part["optimizer_step"]["cpu"]) / (whole["dims"] - part["dims"])
    fixed = part["rest"]["cpu"] + part["optimizer_step"]["cpu"] - per_dim * part["dims"]
    barrier = min(r["node_barrier_wall"] for r in ns["mpi"]["1_nodes_2_ranks"]["ranks"])
    return {"elementwise_per_dim_s": per_dim, "fixed_s": fixed, "node_barrier_2_ranks_s": barrier}


def update_seconds(pop: int, dim: int, k: dict, b1: float, mode: str, adam_alone: float) -> dict:
    """The update on the busiest rank when all RANKS_PER_NODE ranks of its node run it at the same moment."""
    directions = pop // 2
    nbytes = directions * dim * 4
    r = RANKS_PER_NODE
    per_stream = min(b1, NODE_BW / r)  # every rank of the node streams at once
    ranks = float(np.interp(pop, list(k["centered_ranks_s"]), list(k["centered_ranks_s"].values())))
    if mode == "node_split":  # my ranges of whole blocks: the weighted sums, the step, the sums; one node barrier
        s = k["split"]
        mine = -(-dim // r)
        ws = directions * k["weighted_sum_per_direction_s"] + directions * mine * 4 / per_stream
        rest = (s["fixed_s"] - k["centered_ranks_s"][1024] + math.ceil(math.log2(r)) * s["node_barrier_2_ranks_s"]
                + max(s["elementwise_per_dim_s"] * mine, ADAM_BYTES_PER_DIM * mine / per_stream))
        return {"weighted_sum": ws, "adam_and_rest": rest, "centered_ranks": ranks, "total": ws + rest + ranks}
    if mode == "cooperative_sum":  # my 1/r of the dimensions, then a copy of the whole sum (dim float32)
        ws = directions * k["weighted_sum_per_direction_s"] + nbytes / r / per_stream + dim * 4 / per_stream
    else:
        ws = directions * k["weighted_sum_per_direction_s"] + nbytes / per_stream
    adam = max(adam_alone * dim / 159_505, ADAM_BYTES_PER_DIM * dim / per_stream)
    return {"weighted_sum": ws, "adam_and_rest": adam, "centered_ranks": ranks, "total": ws + adam + ranks}


def generation(p: int, m: int, t: dict, k: dict, comp: dict, b1: float, net: dict, mode: str) -> dict:
    pop = m * p
    steps = common.EPISODE_STEPS
    pol = common.policy_cost(m, t["policy_forward"]) if t["policy_forward"] else 0.0
    rollout = steps * (m * t["per_member_step"] + pol) + m * t["reset"]
    row_bytes = 8 * (6 + 2 * t["obs_dim"])
    upd = update_seconds(pop, t["dim"], k, b1, mode, comp["tell"] - comp["weighted_sum"])
    parts = {
        "ask": t["ask_per_member"] * m,
        "update": upd["total"],
        "allgatherv": common.allgather_model(pop * row_bytes, p, net["alpha"], net["beta"]),
        "obs_norm": comp["obs_norm"] * (pop / common.POPULATION) * (t["obs_dim"] / 348),
        "check": (comp["sha256"] * STATE_VECTORS * t["dim"] / 159_505 + common.allgather_model(32 * p, p, net["alpha"], net["beta"])) / common.CHECK_EVERY,
        "stop_flag": common.allreduce_model(p, net["alpha"]),
        "checkpoint": comp["checkpoint"] / common.CHECKPOINT_EVERY,
        "log": comp["log_append"],
    }
    non = sum(parts.values())
    return {"P": p, "members_per_rank": m, "population": pop, "rollout_s": rollout, "parts_s": parts,
            "update_parts_s": upd, "non_rollout_s": non, "share": non / (rollout + non),
            "limit": max(parts, key=parts.get)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--design-point", default="design_point",
                    help="the design point's measured components: results/NAME.json (default: design_point)")
    ap.add_argument("--out", default="cost_model", help="result name under benchmarks/results/")
    a = ap.parse_args()
    dpj, scj, bw, ns = load(a.design_point), load("scaling"), load("bandwidth"), load("node_split")
    machine = common.machine_info()
    comp = dpj["components"]["cpu"]
    b1 = bw["per_stream_bytes_per_s"]["1"]
    k = measure_kernels()
    k["split"] = split_kernel(ns)
    print(f"weighted_sum here: {k['weighted_sum_per_direction_s'] * 1e6:.2f} us per direction + "
          f"{1 / k['weighted_sum_per_byte_s'] / 1e9:.1f} GB/s; one stream measured by bandwidth.json at {b1 / 1e9:.1f} GB/s "
          f"(2 streams here: x{bw['slowdown_2_streams']:.2f}); node assumed {NODE_BW / 1e9:.0f} GB/s for "
          f"{RANKS_PER_NODE} ranks = {NODE_BW / RANKS_PER_NODE / 1e9:.2f} GB/s per rank when all stream")
    ts = tasks(dpj, scj)
    cmd = "python benchmarks/cost_model.py" + (f" --design-point {a.design_point} --out {a.out}" if a.out != "cost_model" else "")
    result = {"benchmark": "cost_model", "command": cmd, "machine": machine,
              "assumptions": {"node_bytes_per_s": NODE_BW, "ranks_per_node": RANKS_PER_NODE,
                              "one_stream_bytes_per_s": b1, "networks": common.NETWORKS},
              "kernels": k, "design_point": {}, "scale_out": {}, "largest_P": {}}

    # the design point: Humanoid 256-256, population 1,024, 64 ranks (one node), upright rollouts
    hum = ts["Humanoid-v5 256-256"]
    for mode in MODES:
        for net in ("ib", "10gbe"):
            g = generation(common.RANKS, common.MEMBERS, hum, k, comp, b1, common.NETWORKS[net], mode)
            result["design_point"][f"{mode}_{net}"] = g
    print("\ndesign point (Humanoid 256-256, pop 1,024, 64 ranks on one node), non-rollout share with contention:")
    for key, g in result["design_point"].items():
        print(f"  {key:22s} update {g['parts_s']['update'] * 1e3:6.1f} ms, all non-rollout {g['non_rollout_s'] * 1e3:6.1f} ms"
              f" vs rollout {g['rollout_s']:.2f} s: {g['share']:.2%}")
    alone = comp["tell"]
    print(f"  (the update alone on one idle core: {alone * 1e3:.1f} ms)")

    print("\nscale-out: non-rollout share of a generation, 64 ranks per node, population = members x P")
    for name, t in ts.items():
        for mode in MODES:
            for net in ("ib", "10gbe"):
                key = f"{name} | {mode} | {net}"
                rows = [generation(p, m, t, k, comp, b1, common.NETWORKS[net], mode)
                        for m in MEMBERS_PER_RANK for p in RANK_COUNTS]
                result["scale_out"][key] = rows
                best = {}
                for m in MEMBERS_PER_RANK:
                    mine = [r for r in rows if r["members_per_rank"] == m]
                    for target in (0.02, 0.05):
                        ok = [r["P"] for r in mine if r["share"] <= target]
                        over = next((r for r in mine if r["share"] > target), None)
                        best[f"m{m}_{int(target * 100)}pct"] = {"largest_P": max(ok) if ok else None,
                                                               "limit_beyond": over["limit"] if over else None}
                result["largest_P"][key] = best
                line = " ".join(f"m={m}: " + "/".join(f"{r['share']:.1%}" for r in rows if r["members_per_rank"] == m)
                                for m in MEMBERS_PER_RANK)
                print(f"  {key}\n    P = {'/'.join(map(str, RANK_COUNTS))}\n    {line}")
                print("    largest P with <= 2 % / <= 5 %: " + ", ".join(
                    f"m={m}: {best[f'm{m}_2pct']['largest_P']} / {best[f'm{m}_5pct']['largest_P']} "
                    f"(then {best[f'm{m}_2pct']['limit_beyond']})" for m in MEMBERS_PER_RANK))
    result["goal_1024_ranks_pop_4096_humanoid_ib"] = {}
    print("\ngoal: <= 2 % at 1,024 ranks, population 4,096, Humanoid 256-256, IB:")
    for mode in MODES:
        goal = next(r for r in result["scale_out"][f"Humanoid-v5 256-256 | {mode} | ib"]
                    if r["P"] == 1024 and r["members_per_rank"] == 4)
        result["goal_1024_ranks_pop_4096_humanoid_ib"][mode] = goal
        u = goal["update_parts_s"]
        print(f"  {mode:16s} {goal['share']:.2%} ({'met' if goal['share'] <= 0.02 else 'NOT met'}); update "
              f"{goal['parts_s']['update'] * 1e3:.1f} ms = weighted sum {u['weighted_sum'] * 1e3:.2f} + optimizer and rest "
              f"{u['adam_and_rest'] * 1e3:.2f} + centered ranks {u['centered_ranks'] * 1e3:.2f}; largest part: "
              f"{goal['limit']} {goal['parts_s'][goal['limit']] * 1e3:.1f} ms")
    result["components_from"] = {"file": f"{a.design_point}.json", "date": dpj["machine"].get("date"),
                                 "loadavg_at_start": dpj["machine"].get("loadavg_at_start"),
                                 "loadavg_at_end": dpj["machine"].get("loadavg_at_end")}
    common.write_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
