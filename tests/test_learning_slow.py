"""Slow learning runs (`make test-all`, or `pytest -m slow`): the shipped presets reach their targets."""
from __future__ import annotations

import csv

import pytest

from conftest import nes

pytestmark = [pytest.mark.slow, pytest.mark.mpi]


def first_eval_at_least(run_dir, target):
    for row in csv.DictReader(open(run_dir / "log.csv")):
        if row["eval_return"] and float(row["eval_return"]) >= target:
            return int(row["timesteps"])
    return None


def test_halfcheetah_preset_reaches_2400_within_2_5_million_steps(tmp_path, mpiexec):
    run = tmp_path / "hc"
    nes("--config", "halfcheetah", "--generations", "62", "--run-dir", run, ranks=2, check=True, timeout=1800)
    reached = first_eval_at_least(run, 2400)
    assert reached is not None and reached <= 2_500_000, reached


def test_inverted_pendulum_preset_reaches_1000_within_0_3_million_steps(tmp_path, mpiexec):
    run = tmp_path / "ip"
    nes("--config", "inverted_pendulum", "--run-dir", run, ranks=2, check=True, timeout=600)
    reached = first_eval_at_least(run, 1000)
    assert reached is not None and reached <= 300_000, reached


def test_humanoid_preset_reaches_6000_within_5_million_steps(tmp_path, mpiexec):
    """The headline: seed 0 of the preset passed 6,000 at generation 120 (4.50 M timesteps; about 15 min on 2 ranks
    here). Exact reproduction needs the same library builds (README, Learning results)."""
    run = tmp_path / "humanoid"
    nes("--config", "humanoid", "--generations", "120", "--run-dir", run, ranks=2, check=True, timeout=3600)
    reached = first_eval_at_least(run, 6000)
    assert reached is not None and reached <= 5_000_000, reached
