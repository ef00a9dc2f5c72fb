"""--tensorboard: the event files read back with TensorBoard's own reader, straight vs killed (-9) and resumed."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import MPIEXEC, child_env, nes
from nes_mpi import checkpoint as ckpt
from nes_mpi.runlog import DETERMINISTIC, TIMING

pytestmark = pytest.mark.mpi

BASE = ["--env", "CartPole-v1", "--population", "8", "--max-episode-steps", "60", "--eval-every", "2",
        "--eval-episodes", "2", "--noise-table-size", str(1 << 20), "--checkpoint-every", "4", "--tensorboard"]
GENERATIONS = 9


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def event_files(run):
    return sorted(p.name for p in (run / "tb").iterdir() if "tfevents" in p.name)


def logged_generation(run) -> int:
    try:
        with open(run / "log.csv") as fh:
            rows = list(csv.DictReader(fh))
        return int(rows[-1]["generation"]) if rows else -1
    except (OSError, ValueError, KeyError):  # being written
        return -1


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("tb") / "straight"
    nes(*BASE, "--generations", GENERATIONS, "--run-dir", run, ranks=2, check=True)
    return run


def test_every_column_of_the_log_is_a_curve_with_one_point_per_generation(straight):
    got = scalars(straight)
    with open(straight / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["generation"]) for r in rows] == list(range(GENERATIONS + 1))
    for col in DETERMINISTIC + TIMING:
        if col == "generation":
            continue
        expected = [(int(r["generation"]), np.float32(float(r[col]))) for r in rows if r[col] != ""]
        assert expected, col
        assert [(s, np.float32(v)) for s, v in got[col]] == expected, col
    assert [s for s, _ in got["eval_return"]] == [0, 2, 4, 6, 8]  # the evaluated generations only
    assert len(event_files(straight)) == 1


def test_killed_and_resumed_run_continues_the_same_curves(tmp_path, mpiexec, straight):
    """kill -9 after a generation beyond the last checkpoint was written: resume drops it and writes it again."""
    run = tmp_path / "run"
    for attempt in range(5):  # generations take milliseconds: if the poll missed the window, run again
        shutil.rmtree(run, ignore_errors=True)
        proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "nes_mpi", *BASE, "--generations", "100000",
                                 "--run-dir", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=child_env(), start_new_session=True)
        try:
            t0 = time.time()
            while logged_generation(run) < 5 or logged_generation(run) % 4 == 0:
                assert proc.poll() is None, proc.communicate()
                assert time.time() - t0 < 120, "the run never got past generation 5"
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank, no chance to clean up
                proc.communicate()
        if ckpt.load(ckpt.latest_good(run)[0]).generation < GENERATIONS - 1:
            break
    else:
        pytest.fail("the kill never landed before generation 8 in 5 attempts")
    kept = ckpt.load(ckpt.latest_good(run)[0]).generation
    before = scalars(run)
    assert max(s for s, _ in before["timesteps"]) > kept  # points the checkpoint does not know about
    old_files = event_files(run)

    nes(*BASE, "--generations", GENERATIONS, "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    after, ref = scalars(run), scalars(straight)
    assert after.keys() == ref.keys()
    for tag in ref:
        steps = [s for s, _ in after[tag]]
        assert steps == sorted(set(steps)) == [s for s, _ in ref[tag]], tag  # no duplicate, no gap
        if tag not in TIMING:
            assert after[tag] == ref[tag], tag  # the same values as the straight run
    assert len(event_files(run)) == 1 and event_files(run) != old_files  # rebuilt, the stale file removed


def test_tensorboard_is_off_by_default(tmp_path):
    run = tmp_path / "run"
    nes(*[a for a in BASE if a != "--tensorboard"], "--generations", 1, "--run-dir", run, ranks=None, check=True)
    assert not (run / "tb").exists()


def test_the_writer_does_not_import_torch(tmp_path):
    """Rank 0 writes the events: the tensorboard package's writer must not bring in torch (~190 MB)."""
    code = ("import sys; from nes_mpi.tensorboard_log import TensorBoardLog; "
            f"TensorBoardLog({str(tmp_path)!r}, [{{'generation': 0, 'timesteps': 0}}]).append({{'generation': 1}}); "
            "sys.exit(1 if 'torch' in sys.modules or 'tensorflow' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], env=child_env(), timeout=120).returncode == 0
    assert len(event_files(tmp_path)) == 1
