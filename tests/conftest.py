"""Shared helpers: launch the real package under real MPI (mpiexec from the venv's MPI)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "helpers"))  # the test environments, importable in-process too
ROOT = TESTS.parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS / "helpers"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("SLURM_STEP_NUM_TASKS", None)
    return env


def nes(*args, ranks: int | None = 1, timeout: float = 300, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run `python -m nes_mpi ARGS` under `mpiexec -n ranks` (ranks=None: no mpiexec)."""
    cmd = [sys.executable, "-m", "nes_mpi", *map(str, args)]
    if ranks is not None:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def info(ckpt) -> dict:
    proc = nes("info", ckpt, "--json", ranks=None, check=True)
    return json.loads(proc.stdout)


def newest_generation(run) -> int:
    """The highest generation among the run's ckpt_*.h5 names (0 if none). Waiting for one named file races
    checkpoint rotation: with generations of milliseconds, ckpt_000002.h5 can be written and rotated away
    between two polls, and then never appears again."""
    names = (Path(run) / "checkpoints").glob("ckpt_*.h5")
    return max((int(p.stem.split("_")[1]) for p in names if p.stem.split("_")[1].isdigit()), default=0)


def wait_for_generation(run, proc, generation: int, timeout: float = 180, poll: float = 0.05) -> None:
    """Until the run has a checkpoint at `generation` or later; fail if `proc` ends first or time runs out."""
    import time
    t0 = time.monotonic()
    while newest_generation(run) < generation:
        assert proc.poll() is None, ("the run ended before generation", generation, proc.communicate())
        assert time.monotonic() - t0 < timeout, f"no checkpoint at generation {generation} or later in {timeout} s"
        time.sleep(poll)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("nes_mpi: error")]


def episode_by_hand(env, spec, theta, seed: int, transform) -> float:
    """Return of one episode of the policy (spec, theta) fed transform(observation), stepped in plain Python:
    an independent reference for what the rollout or the trainer computed."""
    import numpy as np

    from nes_mpi.policy import BatchPolicy

    policy = BatchPolicy(spec)
    policy.load(theta[None, :])
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(policy(transform(np.asarray(obs, np.float32))[None, :])[0])
        total += r
        done = term or trunc
    return total


@pytest.fixture(scope="session")
def mpiexec():
    if MPIEXEC is None:
        pytest.fail("mpiexec not found: install the package with `make install`")
    return MPIEXEC
