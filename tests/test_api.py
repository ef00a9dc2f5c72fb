"""`nes_mpi.train` from a user's script under real mpiexec: summaries, errors on every rank, stop signals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import MPIEXEC, child_env, info, nes, wait_for_generation

pytestmark = pytest.mark.mpi

SMALL = {"env": "CartPole-v1", "population": 8, "eval_every": 2, "eval_episodes": 2, "noise_table_size": 1 << 20,
         "max_episode_steps": 60}

# Each rank writes report_<rank>.json in the current directory: what train() returned or raised.
# (Files, not stdout: mpiexec may splice the ranks' output lines together.)
SCRIPT_HEAD = """
import json, os, signal, sys
from mpi4py import MPI
import nes_mpi

rank = MPI.COMM_WORLD.rank

def report(**kw):
    with open(f"report_{rank}.json", "w") as fh:
        json.dump(kw, fh, default=str)

def summary_dict(s):
    return {k: (str(v) if v is not None else None) for k, v in vars(s).items()}
"""


def run_script(tmp_path, body: str, ranks: int, timeout: float = 300, env_extra=None) -> tuple[subprocess.CompletedProcess, dict]:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT_HEAD + textwrap.dedent(body))
    env = {**child_env(), **(env_extra or {})}
    proc = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)
    return proc, reports(tmp_path)


def reports(directory) -> dict:
    return {int(p.stem.split("_")[1]): json.loads(p.read_text()) for p in directory.glob("report_*.json")}


def test_train_returns_the_same_summary_on_every_rank_and_resumes(tmp_path, mpiexec):
    run = tmp_path / "run"
    body = f"""
    cfg = {dict(SMALL, run_dir=str(run))!r}
    first = nes_mpi.train(cfg, generations=3)
    second = nes_mpi.train(nes_mpi.Config(**cfg, generations=5), resume="auto")
    report(first=summary_dict(first), second=summary_dict(second),
           handler_restored=signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    """
    proc, out = run_script(tmp_path, body, ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert sorted(out) == [0, 1] and out[0] == out[1]
    first, second = out[0]["first"], out[0]["second"]
    assert first["generation"] == "3" and first["stopped"] == "False" and first["stop_signal"] is None
    assert first["checkpoint"] == str(run / "checkpoints" / "ckpt_000003.h5")
    assert second["generation"] == "5" and second["checkpoint"] == str(run / "checkpoints" / "ckpt_000005.h5")
    d = info(second["checkpoint"])
    assert str(d["timesteps"]) == second["timesteps"] and float(second["eval_return"]) == d["eval_return"]
    assert float(second["best_eval_return"]) == d["best_eval_return"]
    assert out[0]["handler_restored"]  # train() put the default SIGTERM handler back
    # the same run from the command line gives the same parameters: one trainer behind both
    cli = tmp_path / "cli"
    nes(*[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()], "--generations", 5, "--run-dir", cli,
        "--checkpoint-every", 3, ranks=2, check=True)
    assert info(cli / "checkpoints" / "ckpt_000005.h5")["params_sha256"] == d["params_sha256"]


def test_train_from_a_toml_path(tmp_path, mpiexec):
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in SMALL.items()) + "generations = 2\n")
    body = f"""
    s = nes_mpi.train({str(toml)!r}, run_dir="tomlrun")
    report(generation=s.generation, run_dir=str(s.run_dir))
    """
    proc, out = run_script(tmp_path, body, ranks=1)
    assert proc.returncode == 0, proc.stderr
    assert out[0] == {"generation": 2, "run_dir": "tomlrun"}
    assert info(tmp_path / "tomlrun" / "checkpoints" / "ckpt_000002.h5")["config"]["population"] == 8


CATCH = """
try:
    nes_mpi.train({cfg!r})
    report(outcome="returned")
except nes_mpi.ConfigError as e:
    report(outcome="ConfigError", message=str(e))
except nes_mpi.CheckpointError as e:
    report(outcome="CheckpointError", message=str(e))
except nes_mpi.TrainingError as e:
    report(outcome="TrainingError", message=str(e), cause=type(e.__cause__).__name__)
"""


@pytest.mark.parametrize("cfg,outcome,message", [
    ({"population": 7}, "ConfigError", "even with antithetic"),
    ({"env": "NoSuchEnv-v0"}, "ConfigError", "unknown environment id"),
    ({"sigma": "abc"}, "ConfigError", "bad value for sigma"),
    ({"resume_from": 3}, "ConfigError", "unknown config key"),
    ({"env": "faulty_envs:FailsToBuildOnRank1"}, "TrainingError", "no simulator licence on this node (on rank 1)"),
], ids=["population", "env", "sigma", "unknown-key", "rank1-only"])
def test_setup_errors_are_raised_on_every_rank(tmp_path, mpiexec, cfg, outcome, message):
    """Caught by the user's script on all 3 ranks: none is left waiting in a collective, nothing is written."""
    cfg = {**SMALL, **cfg, "run_dir": str(tmp_path / "run")}
    proc, out = run_script(tmp_path, CATCH.format(cfg=cfg), ranks=3, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(out) == [0, 1, 2]
    for rank, d in out.items():
        assert d["outcome"] == outcome and message in d["message"], (rank, d)
    if outcome == "TrainingError":  # chained to the original exception on the rank where it happened
        assert [out[r]["cause"] for r in range(3)] == ["NoneType", "RuntimeError", "NoneType"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_checkpoint_raises_checkpoint_error_on_every_rank(tmp_path, mpiexec):
    bad = tmp_path / "bad.h5"
    bad.write_text("not HDF5")
    body = CATCH.replace("nes_mpi.train({cfg!r})", "nes_mpi.train({cfg!r}, resume={bad!r})").format(
        cfg={**SMALL, "run_dir": str(tmp_path / "run")}, bad=str(bad))
    proc, out = run_script(tmp_path, body, ranks=2, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [out[r]["outcome"] for r in (0, 1)] == ["CheckpointError"] * 2
    assert "not a readable HDF5" in out[1]["message"]


def test_a_stop_signal_returns_stopped_instead_of_exiting(tmp_path, mpiexec):
    """SIGUSR1 to one rank: train() checkpoints and returns stopped=True on both; the script decides what next."""
    run = tmp_path / "run"
    ready = tmp_path / "pids"
    body = f"""
    with open({str(ready)!r} + str(rank), "w") as fh:
        fh.write(str(os.getpid()))
    s = nes_mpi.train({dict(SMALL, run_dir=str(run), checkpoint_every=1)!r}, generations=100000)
    report(summary=summary_dict(s))
    """
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT_HEAD + textwrap.dedent(body))
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(), cwd=tmp_path, start_new_session=True)
    try:
        wait_for_generation(run, proc, 2)
        os.kill(int((tmp_path / "pids1").read_text()), signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    got = {r: d["summary"] for r, d in reports(tmp_path).items()}
    assert got[0] == got[1] and got[0]["stopped"] == "True" and got[0]["stop_signal"] == "SIGUSR1"
    g = int(got[0]["generation"])
    assert g >= 2 and got[0]["checkpoint"] == str(run / "checkpoints" / f"ckpt_{g:06d}.h5")
    assert info(got[0]["checkpoint"])["generation"] == g


def test_import_nes_mpi_stays_light():
    code = ("import sys, nes_mpi; nes_mpi.__version__; nes_mpi.Config; "
            "heavy = [m for m in ('mpi4py', 'torch', 'gymnasium', 'h5py') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
