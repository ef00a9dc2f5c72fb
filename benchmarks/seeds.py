"""Learning results over seeds: one row per (preset, strategy) from the learning_*.json files.

    python benchmarks/seeds.py            # after benchmarks/learning.py PRESET --seed S [--strategy X] --name ...

Reads benchmarks/results/learning_<preset>[-<strategy>]-seed<S>.json, prints a markdown table with
the median and range over seeds of the timesteps at which each target was first reached (a
target counts as met when the median meets it: at least half the seeds reach it within the
budget), writes benchmarks/results/seeds.json, and plots each group's curves (mean and min-max
band over seeds) to benchmarks/results/seeds_<preset>[-<strategy>].png with `nes_mpi plot`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, read_log, write_result  # noqa: E402

from nes_mpi.config import SAFE_ON_RESUME, Config, load_toml, preset_names, strategy_options  # noqa: E402

STRATEGIES = ("openai", "snes", "pgpe")
NAME = re.compile(r"^learning_(?P<group>.+)-seed(?P<seed>\d+)\.json$")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return None if n == 0 else (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2)


def status(row) -> str:
    if row["met"]:
        return "met"
    if row["in_progress_seeds"]:  # not met yet, and some seed has budget left
        so_far = ", ".join(f"{t / 1e6:.1f}" for t in row["timesteps_so_far"])
        return f"in progress (at {so_far} M timesteps)"
    return "not met"


def _computes(config: dict) -> dict:
    """What a config computes: as today's Config resolves it, without what may change on resume or the seed."""
    return {k: v for k, v in Config.from_dict(config).to_dict().items() if k not in SAFE_ON_RESUME | {"seed"}}


def shipped_preset(env: str, strategy: str) -> dict | None:
    """The shipped preset for `env` as it resolves under `strategy` (None: no preset for the task)."""
    for name in preset_names():
        options = load_toml(name)
        if options.get("env") == env:
            return _computes(strategy_options({**options, "strategy": strategy}))
    return None


def config_kind(run: dict) -> str:
    """benchmarks/one_config/*.toml: the trainer's defaults, only the task and budget set ("defaults");
    a run that computes what the task's shipped preset computes today ("preset"), whatever file it was
    started from; one started from a preset that has changed since ("earlier preset"); else "variant"."""
    preset = str(run["preset"])
    if "one_config" in preset:
        return "defaults"
    if shipped_preset(run["env"], run["strategy"]) == _computes(run["config"]):
        return "preset"
    return "earlier preset" if "/" not in preset and not preset.endswith(".toml") else "variant"


def main() -> int:
    groups = defaultdict(list)
    for p in sorted(RESULTS.glob("learning_*-seed*.json")):
        m = NAME.match(p.name)
        if m:
            groups[m["group"]].append(json.loads(p.read_text()))
    rows = []
    for group, runs in sorted(groups.items()):
        runs.sort(key=lambda r: r["seed"])
        for i, target in enumerate(runs[0]["targets"]):
            reached = [r["targets"][i]["reached_at_timesteps"] for r in runs]
            within = target["within_timesteps"]
            inf = float("inf")
            med = median([t if t is not None and t <= within else inf for t in reached])
            best = [r["targets"][i]["best_eval_within_budget"] for r in runs]
            rows.append({
                "group": group, "env": runs[0]["env"], "strategy": runs[0]["strategy"],
                "config": config_kind(runs[0]),
                "seeds": [r["seed"] for r in runs], "target": target["target"], "within_timesteps": within,
                "reached_at_timesteps": reached, "median_timesteps": None if med == inf else med,
                "met": med != inf, "best_eval_within_budget": best,
                "in_progress_seeds": [r["seed"] for r in runs if r.get("in_progress")],
                "timesteps_so_far": [r["timesteps"] for r in runs],
                "core_hours": sum(r["core_hours"] for r in runs),
            })
        dirs = [str(RESULTS / "runs" / f"{group}-seed{r['seed']}") for r in runs]
        subprocess.call([sys.executable, "-m", "nes_mpi", "plot", *dirs, "-o", str(RESULTS / f"seeds_{group}.png"),
                         "--title", f"{runs[0]['env']} {runs[0]['strategy']}, seeds {', '.join(str(r['seed']) for r in runs)}"])
    print("| task | config | strategy | target | seeds | median timesteps to target | range | best within budget (per seed) | met |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        hit = [t for t in r["reached_at_timesteps"] if t is not None and t <= r["within_timesteps"]]
        rng = f"{min(hit) / 1e6:.3f}–{max(hit) / 1e6:.3f} M" if hit else "—"
        missed = len(r["seeds"]) - len(hit)
        if missed:
            rng += f" ({missed} of {len(r['seeds'])} not within budget)"
        med = f"{r['median_timesteps'] / 1e6:.3f} M" if r["median_timesteps"] is not None else "not reached"
        best = ", ".join("—" if b is None else f"{b:,.0f}" for b in r["best_eval_within_budget"])
        print(f"| {r['env']} | {r['config']} | {r['strategy']} | {r['target']:,} within {r['within_timesteps'] / 1e6:g} M | "
              f"{len(r['seeds'])} | {med} | {rng} | {best} | {status(r)} |")
    comparison = compare_strategies(groups)
    write_result("seeds", {"rows": rows, "strategy_comparison": comparison})
    return 0


def _log(group: str, seed: int) -> list[tuple[int, float]]:
    """(timesteps, evaluation return) of every evaluation in runs/GROUP-seedS/log.csv."""
    return [(int(r["timesteps"]), float(r["eval_return"]))
            for r in read_log(RESULTS / "runs" / f"{group}-seed{seed}") if r["eval_return"]]


def compare_strategies(groups) -> list[dict]:
    """The strategies side by side on each task, at equal timesteps: over the seeds every strategy has, the
    best evaluation within a common window (the shortest run that was not stopped early at its targets) and
    when each target was first reached. Prints one markdown table."""
    by_env = defaultdict(dict)
    for group, runs in groups.items():
        if config_kind(runs[0]) == "preset":
            by_env[runs[0]["env"]][runs[0]["strategy"]] = (group, runs)
    out = []
    print("\n| task | seeds | window | " + " | ".join(f"{s}: best within window; target reached at" for s in STRATEGIES) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in STRATEGIES) + " |")
    for env, strategies in sorted(by_env.items()):
        if len(strategies) < 2:
            continue
        seeds = sorted(set.intersection(*(set(r["seed"] for r in runs) for _, runs in strategies.values())))
        if not seeds:
            continue
        runs_of = {s: {r["seed"]: r for r in runs} for s, (_, runs) in strategies.items()}
        full = [runs_of[s][k]["timesteps"] for s in strategies for k in seeds if not runs_of[s][k].get("stopped_at_targets")]
        window = min(full) if full else max(runs_of[s][k]["timesteps"] for s in strategies for k in seeds)
        row = {"env": env, "seeds": seeds, "window_timesteps": window, "strategies": {}}
        cells = []
        for s in STRATEGIES:
            if s not in strategies:
                cells.append("not run")
                continue
            group = strategies[s][0]
            bests, reach = [], []
            for k in seeds:
                evals = _log(group, k)
                bests.append(max([e for t, e in evals if t <= window] or [float("nan")]))
                reach.append([r["reached_at_timesteps"] for r in runs_of[s][k]["targets"]])
            row["strategies"][s] = {"group": group, "best_within_window": bests, "targets_reached_at": reach}
            first = ", ".join("/".join("—" if t is None else f"{t / 1e6:.2f}" for t in per) for per in zip(*reach))
            cells.append(f"{median(bests):,.0f} ({', '.join(f'{b:,.0f}' for b in bests)}); {first} M")
        out.append(row)
        print(f"| {env} | {', '.join(map(str, seeds))} | {window / 1e6:.2f} M | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    sys.exit(main())
