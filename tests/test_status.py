"""`python -m nes_mpi status RUN_DIR`: finished / unfinished / no checkpoint, from real HDF5 checkpoints.

The SLURM scripts ask it whether to requeue, so it must answer from the run directory
alone, without MPI, and without importing anything a checkpoint names.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from checkpoints import write_checkpoint as write_ckpt
from conftest import child_env
from nes_mpi import checkpoint as ckpt


def status(*args):
    return subprocess.run([sys.executable, "-m", "nes_mpi", "status", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=child_env())


def test_finished_unfinished_and_empty(tmp_path):
    p = status(tmp_path / "run")
    assert (p.returncode, p.stdout.split(":")[0]) == (4, "no-checkpoint"), p
    write_ckpt(tmp_path / "run", 4, 12)
    p = status(tmp_path / "run")
    assert p.returncode == 3 and p.stdout.startswith("unfinished: generation 4 of 12 ("), p
    write_ckpt(tmp_path / "run", 12, 12)
    p = status(tmp_path / "run", "--json")
    assert p.returncode == 0, p
    assert json.loads(p.stdout) == {"state": "finished", "generation": 12, "generations": 12, "timesteps": 1200,
                                    "timesteps_budget": 0, "checkpoint": str(ckpt.checkpoint_path(tmp_path / "run", 12))}
    # a budget raised on the command line (the batch script's NES_GENERATIONS) wins
    p = status(tmp_path / "run", "--generations", "20")
    assert p.returncode == 3 and "generation 12 of 20" in p.stdout, p


def test_a_reached_timesteps_budget_finishes_the_run(tmp_path):
    write_ckpt(tmp_path / "run", 4, 1000, timesteps=350)  # 400 timesteps: the budget of 350 is reached
    p = status(tmp_path / "run")
    assert p.returncode == 0 and p.stdout.startswith("finished: generation 4 of 1000, 400 of 350 timesteps ("), p
    p = status(tmp_path / "run", "--timesteps", "1000")  # a larger budget on the command line wins
    assert p.returncode == 3 and "400 of 1,000 timesteps" in p.stdout, p
    p = status(tmp_path / "run", "--timesteps", "0", "--json")  # 0: no timesteps budget
    assert p.returncode == 3 and json.loads(p.stdout)["timesteps_budget"] == 0, p


def test_corrupt_newest_checkpoint_is_skipped(tmp_path):
    write_ckpt(tmp_path, 8, 10)
    newest = write_ckpt(tmp_path, 10, 10)
    newest.write_bytes(newest.read_bytes()[:1000])
    p = status(tmp_path)
    assert p.returncode == 3 and "generation 8 of 10" in p.stdout, p


@pytest.mark.parametrize("content", ["file", "negative"])
def test_bad_input_is_one_line_exit_2(tmp_path, content):
    if content == "file":
        (tmp_path / "f").write_text("x")
        p = status(tmp_path / "f")
    else:
        p = status(tmp_path, "--generations", "-1")
    assert p.returncode == 2, p
    assert p.stderr.startswith("nes_mpi: error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_imports_nothing_a_checkpoint_names_and_no_mpi(tmp_path):
    # an env named 'module:Class' in a checkpoint must not be imported by status
    (tmp_path / "planted_env_module.py").write_text("open(__file__ + '.imported', 'w').close()\n")
    write_ckpt(tmp_path / "run", 3, 5, env="planted_env_module:Env")
    code = ("import sys; from nes_mpi.__main__ import main; rc = main(['status', sys.argv[1]]); "
            "print(rc, sorted(m for m in ('mpi4py', 'gymnasium', 'torch', 'planted_env_module') if m in sys.modules))")
    env = child_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "3 []", p.stdout
    assert not (tmp_path / "planted_env_module.py.imported").exists()
