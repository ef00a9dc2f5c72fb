"""What rank 0 reports: one console line and one CSV row per generation.

The same rows are kept in memory as the run's history and stored in every
checkpoint, so a resumed run rewrites the CSV (and the TensorBoard events, with
--tensorboard) from the checkpoint and carries on.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

# Columns that depend only on the config and seed (compared by the exact-resume tests) ...
DETERMINISTIC = ["generation", "timesteps", "episodes", "return_mean", "return_max", "return_min",
                 "eval_return", "eval_return_std", "failed_members", "grad_norm", "update_norm", "param_norm", "sigma_mean"]
# ... and the ones that measure the machine.
TIMING = ["gen_seconds", "steps_per_s", "wall_seconds", "idle_fraction", "moved_members"]
COLUMNS = DETERMINISTIC + TIMING
INT_COLUMNS = {"generation", "timesteps", "episodes", "failed_members"}


class RunLog:
    def __init__(self, run_dir, history: dict | None = None, active: bool = True, tensorboard: bool = False):
        self.path = Path(run_dir) / "log.csv"
        self.active = active
        self.tensorboard = None
        self.rows: dict[str, list] = {c: [] for c in COLUMNS}
        if history:
            for c in COLUMNS:
                self.rows[c] = list(np.asarray(history.get(c, [math.nan] * len(history["generation"]))).tolist())
        if active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(".log.csv.tmp")
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(COLUMNS)
                for i in range(len(self.rows["generation"])):
                    w.writerow(_fmt(c, self.rows[c][i]) for c in COLUMNS)
            os.replace(tmp, self.path)
            if tensorboard:
                from .tensorboard_log import TensorBoardLog

                n = len(self.rows["generation"])
                self.tensorboard = TensorBoardLog(run_dir, [{c: self.rows[c][i] for c in COLUMNS} for i in range(n)])

    def append(self, row: dict) -> None:
        for c in COLUMNS:
            self.rows[c].append(row.get(c, math.nan))
        if self.active:
            with open(self.path, "a", newline="") as fh:
                csv.writer(fh).writerow(_fmt(c, row.get(c, math.nan)) for c in COLUMNS)
            if self.tensorboard is not None:
                self.tensorboard.append(row)

    def history(self) -> dict[str, np.ndarray]:
        return {c: np.asarray(v, dtype=np.int64 if c in INT_COLUMNS else np.float64) for c, v in self.rows.items()}


def _fmt(col, v):
    if col in INT_COLUMNS:
        return int(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v))


def console_line(row: dict) -> str:
    def num(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    failed = f" | failed {row['failed_members']}" if row.get("failed_members") else ""
    return (f"gen {row['generation']:5d} | steps {row['timesteps']:>12,d} | return mean {num(row.get('return_mean'), '9.1f')}"
            f" max {num(row.get('return_max'), '9.1f')} | eval {num(row.get('eval_return'), '9.1f')}"
            f" | {num(row['steps_per_s'], ',.0f'):>8} steps/s | {row['gen_seconds']:6.2f} s{failed}")
