"""Many nodes on one machine: MPICH's `MPIR_CVAR_NUM_CLIQUES=K` splits the ranks into K emulated nodes,
so `Split_type(COMM_TYPE_SHARED)` and the node-shared noise table behave as on K real nodes."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MPIEXEC, child_env, info, wait_for_generation

pytestmark = pytest.mark.mpi

GENS = 24
TABLE = 4 << 20  # four independently filled chunks: each rank of a node fills only some of them
TASK = ["--env", "Hopper-v5", "--population", "12", "--max-episode-steps", "60", "--eval-every", "0",
        "--noise-table-size", str(TABLE), "--check-every", "1", "--checkpoint-every", "1",
        "--keep-checkpoints", str(GENS + 1)]
LAYOUT = re.compile(r"noise table: (\d+) cop(?:y|ies) of ([\d.]+) MiB on (\d+) node\(s\) \(ranks (.*); owners (.*); "
                    r"resident ([\d.]+) MiB summed over ranks\)(; update summed by each node's ranks together)?")


def command(ranks: int, *args) -> list[str]:
    return [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "nes_mpi", *TASK, *map(str, args)]


def node_env(nodes: int) -> dict:
    return {**child_env(), "MPIR_CVAR_NUM_CLIQUES": str(nodes)}


def train(nodes: int, ranks: int, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(ranks, *args), capture_output=True, text=True, timeout=timeout, env=node_env(nodes))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def ranks_of(field: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]"""
    out = []
    for part in field.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def layout(stdout: str) -> dict:
    m = LAYOUT.search(stdout)
    assert m, stdout
    return {"copies": int(m[1]), "mib": float(m[2]), "nodes": [ranks_of(f) for f in m[4].split(" | ")],
            "owners": ranks_of(m[5]), "resident_mib": float(m[6]), "update_split": "update summed by" in m[0]}


def read_log(run: Path) -> list[dict]:
    with open(run / "log.csv") as fh:
        return list(csv.DictReader(fh))


def sha(run: Path, generation: int) -> str:
    return info(run / "checkpoints" / f"ckpt_{generation:06d}.h5")["params_sha256"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """The reference: the same task on 1 rank, every generation's checkpoint kept."""
    run = tmp_path_factory.mktemp("one") / "run"
    proc = train(1, 1, "--generations", GENS, "--run-dir", run)
    lay = layout(proc.stdout)
    assert lay["copies"] == 1 and not lay["update_split"]
    return run


@pytest.mark.parametrize("nodes,ranks", [(2, 5), (3, 7)])
def test_emulated_nodes_match_one_rank_and_hold_one_table_each(tmp_path, one_rank, nodes, ranks):
    """Uneven ranks per node: the same bits as 1 rank, and the run itself reports one table per node, measured."""
    run = tmp_path / "run"
    proc = train(nodes, ranks, "--generations", 3, "--run-dir", run)
    assert sha(run, 3) == sha(one_rank, 3)
    lay = layout(proc.stdout)
    assert sorted(r for node in lay["nodes"] for r in node) == list(range(ranks))
    assert len(lay["nodes"]) == nodes and len({len(n) for n in lay["nodes"]}) == 2  # uneven, e.g. 3+2
    assert lay["copies"] == nodes and lay["owners"] == sorted(min(n) for n in lay["nodes"])
    assert lay["update_split"]  # the same bits although each rank summed only its range of the dimensions
    # The PSS of the table's mapping, summed over every rank, is one table per node: a private copy
    # per rank would sum to `ranks` tables (the mapping also holds a few pages of MPICH's own).
    assert lay["mib"] == TABLE * 4 / 2**20
    assert nodes * lay["mib"] <= lay["resident_mib"] < (nodes + 0.5) * lay["mib"], lay
    # each rank's rollout time travels with its rows: the log's idle fraction is 1 - mean/max over ranks
    idle = [float(r["idle_fraction"]) for r in read_log(run)]
    assert len(idle) == 3 and all(0 < x < 1 for x in idle), idle
    assert {float(r["idle_fraction"]) for r in read_log(one_rank)} == {0.0}


def test_resume_on_a_different_node_count(tmp_path, one_rank):
    run = tmp_path / "run"
    train(2, 4, "--generations", 2, "--run-dir", run)
    proc = train(3, 5, "--generations", 5, "--run-dir", run, "--resume", "auto")
    assert "resuming" in proc.stdout and len(layout(proc.stdout)["nodes"]) == 3
    assert sha(run, 5) == sha(one_rank, 5)


def rank_pids(root: int) -> dict[int, int]:
    """MPI rank -> pid of the processes under `root` (the ranks carry PMI_RANK in their environment)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        marks = [e for e in env if e.startswith(b"PMI_RANK=")]
        if marks and is_descendant(int(d.name), root) and "python" in stat:
            found[int(marks[0].split(b"=")[1])] = int(d.name)
    return found


def is_descendant(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def test_kill_9_of_one_node_aborts_the_job_and_resume_recovers(tmp_path, one_rank):
    """SIGKILL every rank of emulated node 2 mid-run: the job ends (no hang), and `--resume auto` finishes it
    on another layout with the same bits as an uninterrupted 1-rank run."""
    run = tmp_path / "run"
    proc = subprocess.Popen(command(4, "--generations", GENS, "--run-dir", run), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=node_env(2), start_new_session=True)
    try:
        wait_for_generation(run, proc, 2, timeout=300, poll=0.2)
        pids = rank_pids(proc.pid)
        assert sorted(pids) == [0, 1, 2, 3], pids
        # the layout line was printed before generation 1: read which ranks share node 2 (the one without rank 0)
        victims = [r for r in pids if r % 2 == 1]  # MPICH deals ranks to cliques round-robin
        for r in victims:
            os.kill(pids[r], signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    lay = layout(out)
    assert [1, 3] in lay["nodes"], lay  # the victims were exactly one emulated node
    done = sorted(p.name for p in (run / "checkpoints").glob("ckpt_*.h5"))
    assert f"ckpt_{GENS:06d}.h5" not in done, "the run finished before the kill: the test proved nothing"
    resumed = train(3, 3, "--generations", GENS, "--run-dir", run, "--resume", "auto")
    assert "resuming" in resumed.stdout
    assert sha(run, GENS) == sha(one_rank, GENS)


@pytest.mark.slow
def test_the_users_command_at_64_ranks(tmp_path):
    """`mpiexec -n 64 python -m nes_mpi` (oversubscribed 32-fold here): completes, one table, 1-rank bits."""
    args = ["--env", "CartPole-v1", "--population", "128", "--generations", "3", "--eval-every", "0",
            "--noise-table-size", str(1 << 20), "--check-every", "1"]
    shas = {}
    for ranks in (1, 64):
        run = tmp_path / f"r{ranks}"
        proc = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "nes_mpi", *args, "--run-dir", str(run)],
                              capture_output=True, text=True, timeout=900, env=child_env())
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"{ranks} rank(s)" in proc.stdout
        lay = layout(proc.stdout)
        assert lay["copies"] == 1 and lay["nodes"] == [list(range(ranks))]
        assert lay["mib"] <= lay["resident_mib"] < 1.5 * lay["mib"], lay
        shas[ranks] = sha(run, 3)
    assert shas[1] == shas[64]
