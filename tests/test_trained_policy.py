"""load_policy and `export` on checkpoints of short real runs: the actions `eval` takes, bit for bit,
and exported TorchScript / ONNX files that run and agree with it."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from conftest import child_env, error_lines, nes
from nes_mpi import ConfigError, load_policy
from nes_mpi.__main__ import main as cli_main
from nes_mpi.checkpoint import load
from nes_mpi.evaluate import EVAL_CLI_STREAM, PolicyRunner
from nes_mpi.rollout import episode_seed

# Discrete (CartPole: argmax), bounded continuous (Hopper: tanh squash), linear policy (Pendulum: clipping),
# linear policy with raw actions and a tiny observation std floor (MountainCarContinuous, ARS's setting).
RUNS = {
    "CartPole-v1": ["--population", "8", "--max-episode-steps", "120"],
    "Hopper-v5": ["--population", "8", "--max-episode-steps", "120"],
    "Pendulum-v1": ["--population", "8", "--max-episode-steps", "60", "--policy", "linear"],
    "MountainCarContinuous-v0": ["--population", "8", "--max-episode-steps", "60", "--policy", "linear",
                                 "--no-clip-actions", "--obs-std-floor", "1e-4", "--obs-clip", "1000"],
}
EVAL_SEED, EPISODES = 7, 3
# float32 tolerance for TorchScript and ONNX: their matrix products sum in another order than numpy's
# (and tanh is another implementation), so continuous actions differ in the last bits (2.4e-7 seen).
ATOL = 1e-5


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    out = {}
    for env_id, args in RUNS.items():
        run = root / env_id
        nes("--env", env_id, *args, "--generations", "3", "--eval-every", "3", "--eval-episodes", "2",
            "--noise-table-size", str(1 << 20), "--run-dir", run, ranks=2, check=True)
        out[env_id] = run / "checkpoints" / "ckpt_000003.h5"
    return out


class Recorder:
    """Stands in for the env inside eval's rollout(): records the observations the policy saw and its actions."""

    def __init__(self, env):
        self.env = env
        self.obs, self.actions = [], []

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        self.obs.append(np.array(obs))
        return obs, info

    def step(self, action):
        self.actions.append(np.array(action))
        obs, r, term, trunc, info = self.env.step(action)
        self.obs.append(np.array(obs))
        return obs, r, term, trunc, info


def eval_cli(ckpt) -> list[tuple[int, str, int]]:
    """(seed, return as printed, length) of each episode of `python -m nes_mpi eval`."""
    proc = nes("eval", ckpt, "--episodes", EPISODES, "--seed", EVAL_SEED, "--no-progress", ranks=None, check=True)
    rows = re.findall(r"episode\s+\d+\s+seed\s+(\d+)\s+return\s+(\S+)\s+length\s+(\d+)", proc.stdout)
    assert len(rows) == EPISODES, proc.stdout
    return [(int(s), r, int(n)) for s, r, n in rows]


@pytest.mark.parametrize("env_id", list(RUNS))
def test_load_policy_takes_exactly_the_actions_of_eval(ckpts, env_id):
    ckpt = ckpts[env_id]
    policy = load_policy(ckpt)
    runner = PolicyRunner(load(ckpt), str(ckpt))
    try:
        for i, (seed, printed_return, length) in enumerate(eval_cli(ckpt)):
            assert seed == episode_seed(EVAL_SEED, 0, i, 0, EVAL_CLI_STREAM)
            # eval's own episode (the code path of the eval command), recorded step by step
            rec = Recorder(runner.env)
            ret, steps, error = runner.episode(seed, rec)
            assert not error and steps == length == len(rec.actions) and f"{ret:.2f}" == printed_return
            seen = np.stack(rec.obs[: len(rec.actions)])
            taken = np.stack(rec.actions)
            ours = policy(seen)  # a batch ...
            assert ours.dtype == taken.dtype and np.array_equal(ours.reshape(taken.shape), taken)
            for o, a in zip(seen, taken):  # ... and one at a time
                assert np.array_equal(policy(o), a)
            # a user's loop with gymnasium's own env and the loaded policy replays the same episode
            env = gym.make(env_id, max_episode_steps=runner.max_steps)
            obs, _ = env.reset(seed=seed)
            total, n, done = 0.0, 0, False
            while not done:
                obs, r, term, trunc, _ = env.step(policy(obs))
                total, n, done = total + r, n + 1, term or trunc
            env.close()
            assert n == length and total == ret
    finally:
        runner.close()


def _observations(ckpt, policy) -> np.ndarray:
    """Real observations of one eval episode plus wide random ones (to exercise the clipping)."""
    runner = PolicyRunner(load(ckpt), str(ckpt))
    rec = Recorder(runner.env)
    runner.episode(episode_seed(EVAL_SEED, 0, 0, 0, EVAL_CLI_STREAM), rec)
    runner.close()
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((200, policy.spec.obs_dim)) * 10 * policy.obs_std + policy.obs_mean
    return np.concatenate([np.stack(rec.obs), wide]).astype(np.float32)


def _assert_agrees(got, ref, discrete):
    got = np.asarray(got)
    assert got.shape == ref.shape
    if discrete:  # argmax of logits that differ in the last bits: the same index
        assert got.dtype == np.int64 and np.array_equal(got, ref)
    else:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("env_id", list(RUNS))
def test_exported_torchscript_and_onnx_agree_with_load_policy(ckpts, env_id, tmp_path, capsys):
    import onnxruntime
    import torch

    ckpt = ckpts[env_id]
    policy = load_policy(ckpt)
    obs = _observations(ckpt, policy)
    ref = policy(obs)
    discrete = policy.spec.discrete
    if not policy.spec.clip_actions:  # the raw path really is taken: actions beyond the bounds, floor below 1e-2
        assert np.abs(ref).max() > 1.0 and policy.obs_std.min() < 1e-2
    with torch.no_grad():
        _assert_agrees(policy.torch_module()(torch.as_tensor(obs)).numpy(), ref, discrete)

    pt, onnx_file = tmp_path / "policy.pt", tmp_path / "policy.onnx"
    for out in (pt, onnx_file):  # the command's own entry point, in this process (torch is loaded already)
        assert cli_main(["export", str(ckpt), "-o", str(out)]) == 0
        assert str(out) in capsys.readouterr().out and out.stat().st_size > 0
    scripted = torch.jit.load(str(pt))
    with torch.no_grad():
        _assert_agrees(scripted(torch.as_tensor(obs)).numpy(), ref, discrete)
        assert np.array_equal(scripted(torch.as_tensor(obs[0])).numpy(), scripted(torch.as_tensor(obs[:1])).numpy()[0])
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"]
    _assert_agrees(session.run(["action"], {"obs": obs})[0], ref, discrete)
    _assert_agrees(session.run(["action"], {"obs": obs[:1]})[0], ref[:1], discrete)  # any batch size


def test_export_bad_input_is_one_line_exit_2(ckpts, tmp_path):
    proc = nes("export", ckpts["CartPole-v1"], "-o", tmp_path / "policy.zip", ranks=None)
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1 and "unknown format" in proc.stderr
    bad = tmp_path / "bad.h5"
    bad.write_text("not HDF5")
    proc = nes("export", bad, "-o", tmp_path / "policy.onnx", ranks=None)
    assert proc.returncode == 2 and "not a readable HDF5" in proc.stderr and not (tmp_path / "policy.onnx").exists()


def test_env_argument_checks_the_spaces(ckpts):
    with gym.make("Hopper-v5") as env:
        assert load_policy(ckpts["Hopper-v5"], env=env).spec.act_dim == 3
    with gym.make("CartPole-v1") as env, pytest.raises(ConfigError, match="does not fit"):
        load_policy(ckpts["Hopper-v5"], env=env)


MARKER_ENV = """
import os, pathlib
pathlib.Path(os.environ["NES_TEST_MARKER"]).write_text("imported")  # the side effect we watch for
from faulty_envs import PointEnv
"""


def test_load_policy_and_export_never_import_the_checkpoints_env(tmp_path):
    """A checkpoint naming 'module:Class' is used without importing that module: it could run anything."""
    (tmp_path / "marker_env.py").write_text(MARKER_ENV)
    marker = tmp_path / "imported"
    env = {**child_env(), "NES_TEST_MARKER": str(marker)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "nes_mpi", "--env", "marker_env:PointEnv", "--generations", "2",
                    "--population", "8", "--eval-every", "0", "--noise-table-size", str(1 << 20), "--run-dir", str(run)],
                   env=env, check=True, capture_output=True, timeout=300)
    assert marker.exists()  # training did import it: the watch works
    marker.unlink()
    ckpt = run / "checkpoints" / "ckpt_000002.h5"
    code = (f"import sys, numpy as np, nes_mpi, nes_mpi.__main__ as cli; p = nes_mpi.load_policy({str(ckpt)!r}); "
            "a = p(np.zeros(3, np.float32)); p.torch_module(); assert p.env_id == 'marker_env:PointEnv'; "
            f"assert cli.main(['export', {str(ckpt)!r}, '-o', {str(tmp_path / 'p.pt')!r}]) == 0; "
            f"assert cli.main(['export', {str(ckpt)!r}, '-o', {str(tmp_path / 'p.onnx')!r}]) == 0; "
            "sys.exit(1 if 'marker_env' in sys.modules else 0)")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    assert not marker.exists() and (tmp_path / "p.onnx").exists()
