"""`python -m nes_mpi plot RUN_DIR [RUN_DIR ...] -o curves.png`: learning curves from run directories.

Two panels, return against environment steps and against wall-clock time. The
solid line is the evaluation return of the mean policy (the generations with an
evaluation), the light line the mean return of the population. Runs whose
configurations differ only in the seed (and in settings that do not change what
a run computes, such as --generations or --checkpoint-every) form one group:
its line is the mean over seeds, interpolated on a common grid over the range
every seed covers, with the min-max range over seeds shaded.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import SAFE_ON_RESUME, ConfigError

FIGSIZE = (12.0, 4.5)  # inches
DPI = 100              # so the PNG is 1200 x 450 pixels
GRID_POINTS = 200
NEEDED = ("generation", "timesteps", "return_mean", "eval_return", "wall_seconds")
# Settings that do not make runs different experiments.
NOT_GROUPED_BY = set(SAFE_ON_RESUME) | {"seed"}
_SEED_SUFFIX = re.compile(r"[-_.]?seed[-_=]?\d+$", re.IGNORECASE)


@dataclass
class Run:
    path: Path
    columns: dict[str, np.ndarray]
    config: dict = field(default_factory=dict)

    @property
    def env(self) -> str:
        return str(self.config.get("env") or "?")

    @property
    def seed(self):
        return self.config.get("seed")

    def series(self, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
        """Points of column y against column x where both are present, in x order."""
        xs, ys = self.columns[x], self.columns[y]
        keep = np.isfinite(xs) & np.isfinite(ys)
        xs, ys = xs[keep], ys[keep]
        order = np.argsort(xs, kind="stable")
        return xs[order], ys[order]


def run_plot(args) -> int:
    out = Path(args.output)
    runs = []
    seen = set()
    for raw in args.run_dirs:
        run = read_run(raw)
        key = run.path.resolve()
        if key not in seen:
            seen.add(key)
            runs.append(run)
    for run in runs:
        if not np.isfinite(run.columns["eval_return"]).any():
            print(f"nes_mpi: warning: {run.path} has no evaluation rows (--eval-every 0?); "
                  "plotting its population mean only", file=sys.stderr)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    try:
        supported = fig.canvas.get_supported_filetypes()
        suffix = out.suffix.lower().lstrip(".")
        if suffix not in supported:
            raise ConfigError(f"-o {out}: unknown image type {repr('.' + suffix) if suffix else '(no suffix)'}; "
                              f"use .png (or one of {', '.join('.' + s for s in sorted(supported))})")
        draw(fig, axes, group_runs(runs), args.title)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=DPI)
        except OSError as e:
            raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    print(out)
    return 0


# ---- reading ------------------------------------------------------------------------------------------
def read_run(raw: str) -> Run:
    d = Path(raw)
    if d.is_file() and d.name == "log.csv":
        d = d.parent
    if not d.exists():
        raise ConfigError(f"run directory not found: {raw}")
    if not d.is_dir():
        raise ConfigError(f"{raw} is not a run directory")
    log = d / "log.csv"
    if not log.is_file():
        raise ConfigError(f"{raw} has no log.csv (not an nes_mpi run directory, or the run has not started)")
    return Run(d, read_log(log), read_config(d))


def read_log(log: Path) -> dict[str, np.ndarray]:
    try:
        with open(log, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"cannot read {log}: {e}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise ConfigError(f"{log} is empty")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in NEEDED if c not in header]
    if missing:
        raise ConfigError(f"{log} lacks column(s) {', '.join(missing)}: not an nes_mpi log")
    index = {c: header.index(c) for c in NEEDED}
    data = {c: [] for c in NEEDED}
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    for n, row in enumerate(body):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields, expected {len(header)}")
            values = {c: _number(row[i]) for c, i in index.items()}
        except ValueError as e:
            if n == len(body) - 1:  # a line the trainer is writing right now
                break
            raise ConfigError(f"{log}: bad row {n + 2} ({e})") from None
        for c, v in values.items():
            data[c].append(v)
    if not data["generation"]:
        raise ConfigError(f"{log} is empty (no generation logged yet)")
    return {c: np.asarray(v, dtype=np.float64) for c, v in data.items()}


def _number(cell: str) -> float:
    cell = cell.strip()
    return math.nan if cell == "" else float(cell)


def read_config(d: Path) -> dict:
    """The run's config: config.toml, else the newest checkpoint's, else unknown ({})."""
    from .config import load_toml

    toml = d / "config.toml"
    if toml.is_file():
        try:
            return _resolved(load_toml(toml))
        except ConfigError:
            pass
    from . import checkpoint as ckpt

    for _, p in ckpt.list_checkpoints(d):
        try:
            return _resolved(ckpt.load(p, verify=False, legacy=True).config)
        except ckpt.CheckpointError:
            continue
    return {}


def _resolved(config: dict) -> dict:
    """The config as this version resolves it, so a run written before an option existed groups with a run that
    states that option's default (unreadable as a Config: as written)."""
    from .config import Config, strategy_options

    try:
        return Config.from_dict(strategy_options(config)).to_dict()
    except (ConfigError, TypeError, ValueError):
        return config


# ---- grouping and labels ---------------------------------------------------------------------------------
def group_key(run: Run) -> str:
    if not run.config:
        return "unknown:" + str(run.path.resolve())  # cannot tell what it is: never grouped
    return json.dumps({k: v for k, v in run.config.items() if k not in NOT_GROUPED_BY}, sort_keys=True, default=str)


def group_runs(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """[(legend label, runs)] in the order the groups first appear on the command line."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    labelled = [(_label(members), key, members) for key, members in groups.items()]
    # Groups whose names collide: add the settings that tell them apart.
    counts: dict[str, int] = {}
    for label, _, _ in labelled:
        counts[label] = counts.get(label, 0) + 1
    result = []
    for label, key, members in labelled:
        if counts[label] > 1:
            others = [m[0].config for lab, _, m in labelled if lab == label]
            diff = _differing(members[0].config, others)
            if diff:
                label = f"{label} [{diff}]"
        result.append((label, members))
    return result


def _label(members: list[Run]) -> str:
    env = members[0].env
    names = []
    for r in members:
        name = _SEED_SUFFIX.sub("", r.path.name) if r.seed is not None else r.path.name
        if name not in names:
            names.append(name)
    if len(names) > 1:
        common = os.path.commonprefix(names).rstrip("-_. ")
        name = common or "+".join(names)
    else:
        name = names[0]
    plain_env = env.replace(":", "_").replace("/", "_")
    label = env if name in ("", plain_env) else f"{env} {name}"
    seeds = sorted({r.seed for r in members if r.seed is not None}, key=str)
    if len(members) > 1:
        label += f" (seeds {', '.join(map(str, seeds))})" if seeds else f" ({len(members)} runs)"
    elif seeds:
        label += f" (seed {seeds[0]})"
    return label


def _differing(cfg: dict, others: list[dict], limit: int = 3) -> str:
    keys = sorted(k for k in set(cfg).union(*others) if k not in NOT_GROUPED_BY
                  and len({json.dumps(o.get(k), sort_keys=True, default=str) for o in others}) > 1)
    return ", ".join(f"{k}={_short_value(cfg.get(k))}" for k in keys[:limit]) + (", ..." if len(keys) > limit else "")


def _short_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


# ---- drawing -------------------------------------------------------------------------------------------
def _wall_unit(runs: list[Run]) -> tuple[float, str]:
    longest = max((np.nanmax(r.columns["wall_seconds"]) for r in runs
                   if np.isfinite(r.columns["wall_seconds"]).any()), default=0.0)
    if longest >= 2 * 3600:
        return 3600.0, "h"
    if longest >= 2 * 60:
        return 60.0, "min"
    return 1.0, "s"


def draw(fig, axes, groups: list[tuple[str, list[Run]]], title: str | None) -> None:
    import matplotlib as mpl
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    all_runs = [r for _, members in groups for r in members]
    scale, unit = _wall_unit(all_runs)
    colors = mpl.rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    panels = [(axes[0], "timesteps", 1.0, "environment steps"), (axes[1], "wall_seconds", scale, f"wall-clock time ({unit})")]
    drawn = {"pop": False, "eval": False, "band": False}
    for i, (label, members) in enumerate(groups):
        color = colors[i % len(colors)]
        for ax, xcol, xscale, _ in panels:
            line, band = _draw_series(ax, [r.series(xcol, "return_mean") for r in members], xscale, color,
                                      lw=1.0, alpha=0.35)
            drawn["pop"] |= line
            drawn["band"] |= band
            line, band = _draw_series(ax, [r.series(xcol, "eval_return") for r in members], xscale, color,
                                      lw=1.8, alpha=1.0)
            drawn["eval"] |= line
            drawn["band"] |= band
    for ax, _, _, xlabel in panels:
        ax.set_xlabel(xlabel)
        ax.set_ylabel("return")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.02)
    axes[0].set_title("return vs environment steps", fontsize="medium")
    axes[1].set_title("return vs wall-clock time", fontsize="medium")
    axes[0].ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))

    handles = [Line2D([], [], color=colors[i % len(colors)], lw=2, label=label) for i, (label, _) in enumerate(groups)]
    if drawn["eval"]:
        handles.append(Line2D([], [], color="0.2", lw=1.8, label="evaluation return"))
    if drawn["pop"]:
        handles.append(Line2D([], [], color="0.2", lw=1.0, alpha=0.35, label="population mean return"))
    if drawn["band"]:
        handles.append(Patch(facecolor="0.2", alpha=0.2, label="mean and min-max over seeds"))
    axes[0].legend(handles=handles, loc="best", fontsize="small", framealpha=0.85)

    envs = []
    for r in all_runs:
        if r.env not in envs:
            envs.append(r.env)
    fig.suptitle(title if title is not None else "nes_mpi learning curves: " + ", ".join(envs))
    fig.tight_layout()


def _draw_series(ax, series: list[tuple[np.ndarray, np.ndarray]], xscale: float, color, lw: float,
                 alpha: float) -> tuple[bool, bool]:
    """One run: its line. Several: mean with a min-max band on a common grid. Returns (drew anything, drew a band)."""
    series = [(x / xscale, y) for x, y in series if x.size]
    if not series:
        return False, False
    if len(series) == 1:
        x, y = series[0]
        ax.plot(x, y, color=color, lw=lw, alpha=alpha, marker="o" if x.size <= 30 else None, ms=3)
        return True, False
    lo = max(x[0] for x, _ in series)
    hi = min(x[-1] for x, _ in series)
    if hi < lo:  # the seeds cover disjoint ranges: show them one by one
        for x, y in series:
            ax.plot(x, y, color=color, lw=lw * 0.7, alpha=alpha)
        return True, False
    grid = np.linspace(lo, hi, GRID_POINTS) if hi > lo else np.array([lo])
    ys = np.stack([np.interp(grid, x, y) for x, y in series])
    mean, low, high = ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)
    if grid.size == 1:
        ax.errorbar(grid, mean, yerr=[mean - low, high - mean], color=color, alpha=alpha, fmt="o", ms=4, capsize=3)
    else:
        ax.plot(grid, mean, color=color, lw=lw, alpha=alpha)
        ax.fill_between(grid, low, high, color=color, alpha=0.2 * alpha, lw=0)
    return True, True
