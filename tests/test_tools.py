"""The `eval` and `plot` subcommands, on real checkpoints and logs made by short training runs."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)

MEAN_STD = re.compile(r"^return (-?\d+\.\d+) ± (\d+\.\d+)", re.MULTILINE)


def nes(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nes_mpi", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def train(run_dir: Path, *extra) -> Path:
    subprocess.run([sys.executable, "-m", "nes_mpi", *map(str, extra), "--run-dir", str(run_dir)],
                   cwd=run_dir.parent, check=True, capture_output=True, timeout=240)
    return run_dir


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nes_mpi: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two CartPole seeds, 5 generations each, evaluated at generations 0 and 5."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        train(root / f"CartPole-v1-seed{seed}", "--env", "CartPole-v1", "--generations", 5, "--population", 16,
              "--eval-every", 5, "--eval-episodes", 2, "--seed", seed)
    return root


@pytest.fixture(scope="module")
def cartpole_ckpt(runs) -> Path:
    return runs / "CartPole-v1-seed0" / "checkpoints" / "ckpt_000005.h5"


@pytest.fixture(scope="module")
def pendulum_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mujoco")
    run = train(root / "pendulum", "--env", "InvertedPendulum-v5", "--generations", 2, "--population", 16,
                "--max-episode-steps", 50, "--eval-every", 1, "--eval-episodes", 2)
    return run / "checkpoints" / "ckpt_000002.h5"


@pytest.fixture(scope="module")
def egl(tmp_path_factory):
    """Skip only when an offscreen OpenGL context really cannot be made (with MUJOCO_GL, default egl)."""
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL") or "egl")
    probe = subprocess.run([sys.executable, "-c", "import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free()"],
                           env=env, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"cannot create an offscreen OpenGL context with MUJOCO_GL={env['MUJOCO_GL']} "
                    f"(apt-get install libegl1 libgl1?): {last}")


# ---- eval ------------------------------------------------------------------------------------------------
def test_eval_prints_mean_and_std(cartpole_ckpt, tmp_path):
    proc = nes("eval", cartpole_ckpt, "--episodes", 3, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = MEAN_STD.search(proc.stdout)
    assert m, proc.stdout
    episodes = re.findall(r"^  episode +(\d+) +seed +\d+ +return +(\S+) +length +(\d+)$", proc.stdout, re.MULTILINE)
    assert [int(e[0]) for e in episodes] == [0, 1, 2]
    returns = np.array([float(e[1]) for e in episodes])
    assert float(m.group(1)) == pytest.approx(returns.mean(), abs=0.006)
    assert float(m.group(2)) == pytest.approx(returns.std(), abs=0.006)
    # CartPole pays 1 per step, so the lengths are the returns.
    assert [int(e[2]) for e in episodes] == [int(r) for r in returns]
    assert re.search(r"^length \d+\.\d ± \d+\.\d steps", proc.stdout, re.MULTILINE)
    assert proc.stderr == ""  # no progress bar when asked, nothing else either

    again = nes("eval", cartpole_ckpt, "--episodes", 3, "--no-progress", cwd=tmp_path)
    assert again.stdout == proc.stdout  # same --seed, same episodes


def test_eval_reproduces_the_training_evaluation(runs, cartpole_ckpt):
    """Same episode seeds as the trainer's evaluation at generation 5 -> exactly the logged eval return."""
    from nes_mpi.checkpoint import load
    from nes_mpi.evaluate import PolicyRunner
    from nes_mpi.rollout import episode_seed

    EVAL_STREAM = 1  # nes_mpi.trainer.EVAL_STREAM; importing the trainer would start MPI in this process

    state = load(cartpole_ckpt)
    runner = PolicyRunner(state)
    try:
        returns = [runner.episode(episode_seed(state.config["seed"], 5, j, 0, EVAL_STREAM))[0]
                   for j in range(state.config["eval_episodes"])]
    finally:
        runner.close()
    with open(runs / "CartPole-v1-seed0" / "log.csv", newline="") as fh:
        logged = float(list(csv.DictReader(fh))[-1]["eval_return"])
    assert np.mean(returns) == logged


@pytest.mark.parametrize("content", [b"this is not a checkpoint\n", None], ids=["garbage", "missing"])
def test_eval_bad_file_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "bad.h5"
    if content is not None:
        path.write_bytes(content)
    proc = nes("eval", path, cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.h5" in one_error_line(proc)
    assert proc.stdout == ""


def test_eval_unknown_video_type_exit_2(cartpole_ckpt, tmp_path):
    proc = nes("eval", cartpole_ckpt, "--render", tmp_path / "out.avi", cwd=tmp_path)
    assert proc.returncode == 2
    assert ".avi" in one_error_line(proc)
    assert not (tmp_path / "out.avi").exists()


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_render_video(pendulum_ckpt, egl, tmp_path, monkeypatch, suffix):
    import gymnasium as gym
    import imageio.v3 as iio

    out = tmp_path / f"pendulum{suffix}"
    proc = nes("eval", pendulum_ckpt, "--episodes", 2, "--render", out, "--render-episodes", 1, "--no-progress",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert MEAN_STD.search(proc.stdout), proc.stdout
    steps = int(re.search(r"^  episode +0 .* length +(\d+)$", proc.stdout, re.MULTILINE).group(1))
    m = re.search(r"^video .*: (\d+) frames, (\d+)x(\d+), (\d+) fps", proc.stdout, re.MULTILINE)
    assert m, proc.stdout
    assert int(m.group(1)) == steps + 1  # the reset frame and one per step

    monkeypatch.chdir(tmp_path)  # MuJoCo appends its load warnings to ./MUJOCO_LOG.TXT
    env = gym.make("InvertedPendulum-v5")  # no render mode: reads the frame size without a GL context
    height, width = env.unwrapped.height, env.unwrapped.width
    env.close()
    assert (int(m.group(2)), int(m.group(3))) == (width, height)
    assert out.stat().st_size > 0
    frames = iio.imread(out, index=None)
    assert frames.ndim == 4 and frames.shape[1:] == (height, width, 3)
    if suffix == ".mp4":
        assert frames.shape[0] == steps + 1
    else:  # Pillow folds identical consecutive frames into one longer frame
        assert 0 < frames.shape[0] <= steps + 1
    assert frames.max() > 50  # something was drawn, not a black frame


# ---- plot ------------------------------------------------------------------------------------------------
def test_plot_two_seeds(runs, tmp_path):
    from PIL import Image

    from nes_mpi.plot import DPI, FIGSIZE

    out = tmp_path / "figs" / "curves.png"
    proc = nes("plot", runs / "CartPole-v1-seed0", runs / "CartPole-v1-seed1", "-o", out, "--title", "two seeds",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert out.stat().st_size > 0
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not a blank canvas


def test_plot_groups_seeds(runs):
    from nes_mpi.plot import group_runs, read_run

    groups = group_runs([read_run(str(runs / f"CartPole-v1-seed{s}")) for s in (0, 1)])
    assert [(label, len(members)) for label, members in groups] == [("CartPole-v1 (seeds 0, 1)", 2)]


def test_plot_groups_a_run_from_before_an_option_existed_with_one_that_states_its_default(runs, tmp_path):
    from nes_mpi.plot import group_runs, read_run

    older = tmp_path / "CartPole-v1-seed1"
    shutil.copytree(runs / "CartPole-v1-seed1", older)
    toml = older / "config.toml"
    lines = toml.read_text().splitlines(keepends=True)
    assert any(line.startswith("shaping = ") for line in lines)
    toml.write_text("".join(line for line in lines if not line.startswith("shaping = ")))  # as older versions wrote it
    groups = group_runs([read_run(str(runs / "CartPole-v1-seed0")), read_run(str(older))])
    assert [(label, len(members)) for label, members in groups] == [("CartPole-v1 (seeds 0, 1)", 2)]


def test_plot_missing_dir_exit_2(runs, tmp_path):
    missing = tmp_path / "no-such-run"
    proc = nes("plot", runs / "CartPole-v1-seed0", missing, "-o", tmp_path / "c.png", cwd=tmp_path)
    assert proc.returncode == 2
    assert str(missing) in one_error_line(proc)
    assert not (tmp_path / "c.png").exists()


def test_plot_empty_log_exit_2(tmp_path):
    run = tmp_path / "empty-run"
    run.mkdir()
    (run / "log.csv").write_text("")
    proc = nes("plot", run, "-o", tmp_path / "c.png", cwd=tmp_path)
    assert proc.returncode == 2
    assert "log.csv" in one_error_line(proc)


def test_seeds_counts_a_run_as_the_preset_by_what_it_computes():
    """benchmarks/seeds.py: a run of the shipped preset's settings is "preset" whatever file it was started from
    (a variant with the same content, or a budget changed on resume); a preset run whose preset has changed
    since is "earlier preset"; anything else computing differently is "variant"."""
    import sys

    from nes_mpi.config import Config, load_toml, strategy_options

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import seeds

    hopper = Config.from_dict(strategy_options(load_toml("hopper"))).to_dict()
    run = {"env": "Hopper-v5", "strategy": "openai", "preset": "hopper", "config": {**hopper, "seed": 2}}
    assert seeds.config_kind(run) == "preset"
    assert seeds.config_kind({**run, "preset": "benchmarks/variants/x.toml",
                              "config": {**hopper, "timesteps": 3_000_000}}) == "preset"
    changed = {**hopper, "population": 40}
    assert seeds.config_kind({**run, "config": changed}) == "earlier preset"
    assert seeds.config_kind({**run, "preset": "benchmarks/variants/x.toml", "config": changed}) == "variant"
    hopper_snes = Config.from_dict(strategy_options({**load_toml("hopper"), "strategy": "snes"})).to_dict()
    assert seeds.config_kind({**run, "strategy": "snes", "config": hopper_snes}) == "preset"
    assert seeds.config_kind({**run, "config": hopper_snes}) == "earlier preset"  # snes settings, labelled openai
    assert seeds.config_kind({**run, "preset": "benchmarks/one_config/hopper.toml"}) == "defaults"
