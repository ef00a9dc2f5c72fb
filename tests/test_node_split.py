"""The update split over a node's ranks (comm.NodeSplit, dims.py): each rank runs the strategy's tell on its range
of the dimensions into node-shared state. Every strategy and optimizer must give the bits of 1 rank on emulated
nodes of uneven size (`MPIR_CVAR_NUM_CLIQUES`), resume exactly on another layout, and a rank that computes its
range from a diverged state must still be caught by the cross-rank hash check."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import MPIEXEC, child_env, error_lines
from nes_mpi import checkpoint as ckpt
from nes_mpi.dims import BLOCK, block_span, block_sums, n_blocks
from test_strategies_mpi import assert_bitwise_equal, full_state

# CartPole's 4,610 parameters are 19 blocks: every rank of a 3-rank node gets a range, of 7, 6 and 6 blocks.
BASE = ["--env", "CartPole-v1", "--population", "14", "--eval-every", "2", "--eval-episodes", "2",
        "--noise-table-size", str(1 << 20), "--checkpoint-every", "1", "--keep-checkpoints", "10", "--check-every", "1"]
# Each optimizer, and the non-elementwise parts: ClipUp's two norms over all dimensions, weight decay.
CASES = {
    "openai-adam-decay": ["--strategy", "openai", "--weight-decay", "0.01"],
    "openai-sgd": ["--strategy", "openai", "--optimizer", "sgd", "--lr", "0.05"],
    "openai-clipup": ["--strategy", "openai", "--optimizer", "clipup", "--lr", "0.05"],
    "snes-gd": ["--strategy", "snes"],
    "pgpe-clipup": ["--strategy", "pgpe"],
}


def train(nodes: int, ranks: int, *args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "nes_mpi", *BASE, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**child_env(), "MPIR_CVAR_NUM_CLIQUES": str(nodes), **(env or {})})
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def at(run, generation: int) -> dict:
    return full_state(ckpt.checkpoint_path(run, generation))


def test_block_sums_of_any_split_have_the_bits_of_the_whole():
    """The ranges are whole blocks, so the per-block sums that ranks compute apart are the whole vector's."""
    rng = np.random.default_rng(3)
    for dim in (1, BLOCK - 1, BLOCK, 4610, 159_505):
        x = rng.standard_normal(dim) * 10.0 ** rng.integers(-3, 4, dim)
        whole = block_sums(x)
        assert whole.size == n_blocks(dim)
        for size in (2, 3, 7, 64):
            spans = [block_span(dim, size, r) for r in range(size)]
            assert [s[0] for s in spans[1:]] == [s[1] for s in spans[:-1]] and spans[0][0] == 0 and spans[-1][1] == dim
            assert all(lo == hi or first * BLOCK == lo for lo, hi, first in spans)  # empty ones: more ranks than blocks
            parts = np.concatenate([block_sums(x[lo:hi]) for lo, hi, _ in spans])
            assert parts.tobytes() == whole.tobytes()


@pytest.mark.mpi
@pytest.mark.parametrize("case", list(CASES))
def test_uneven_emulated_nodes_give_the_bits_of_one_rank_and_resume_exactly(tmp_path, mpiexec, case):
    """1 rank vs 2 nodes of 3+2 ranks vs 3 nodes of 3+2+2 ranks stopped at generation 2 and resumed on 3+2:
    mean, sigma, optimizer moments and step, statistics, counters and the logged norms, bit for bit."""
    args = CASES[case]
    one, two, three = tmp_path / "one", tmp_path / "two", tmp_path / "three"
    train(1, 1, *args, "--generations", 4, "--run-dir", one)
    proc = train(2, 5, *args, "--generations", 4, "--run-dir", two)
    assert "(ranks 0,2,4 | 1,3;" in proc.stdout and "update summed by each node's ranks together" in proc.stdout
    train(3, 7, *args, "--generations", 2, "--run-dir", three)
    assert_bitwise_equal(at(one, 2), at(three, 2))
    proc = train(2, 5, *args, "--generations", 4, "--run-dir", three, "--resume", "auto")
    assert "resuming" in proc.stdout
    for g in (1, 2, 3, 4):
        assert_bitwise_equal(at(one, g), at(two, g))
    assert_bitwise_equal(at(one, 4), at(three, 4))
    assert at(one, 4)["strategy/opt_t"] == 4  # four real steps: no generation was a tie without an update


@pytest.mark.mpi
def test_a_rank_whose_state_diverged_spoils_its_nodes_range_and_is_caught_at_the_next_check(tmp_path, mpiexec):
    """Ranks 0,2 | 1,3 on two nodes. Rank 1 (node 2's first rank: its range holds parameter 0) has its mean
    perturbed after generation 3; generation 4 is computed from it on node 2 only, so the check at generation 4
    finds node 2's ranks differing from rank 0, and no checkpoint of the diverged state is written."""
    run = tmp_path / "div"
    proc = train(2, 4, "--generations", 8, "--check-every", 2, "--checkpoint-every", 2, "--run-dir", run,
                 check=False, env={"NES_MPI_INJECT_DIVERGENCE": "1:3"})
    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "diverged at generation 4" in lines[0] and "ranks [1, 3]" in lines[0], proc.stderr
    assert [g for g, _ in ckpt.list_checkpoints(run)] == [2]
