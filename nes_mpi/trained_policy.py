"""`nes_mpi.load_policy(path)`: a checkpoint's mean policy as a callable, for use outside nes_mpi.

Only the numbers in the checkpoint are used (parameters, policy description,
observation statistics): the environment it names, possibly 'module:Class' of
someone's code, is never imported. Actions come from the same numpy forward,
normalisation and clipping as the trainer's rollouts, so they are bit for bit
what `python -m nes_mpi eval` and the in-training evaluation take.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import load
from .config import ConfigError
from .obs_norm import ObsNorm
from .policy import BatchPolicy, PolicySpec


class TrainedPolicy:
    """Raw observation(s) -> action(s). Attributes: spec, params, obs_mean, obs_std, obs_inv_std, obs_clip, env_id."""

    def __init__(self, spec: PolicySpec, params: np.ndarray, obs_mean: np.ndarray, obs_std: np.ndarray,
                 obs_clip: float, env_id: str = ""):
        self.spec = spec
        self.params = np.asarray(params, dtype=np.float32)
        self.obs_mean = np.asarray(obs_mean, dtype=np.float32)
        self.obs_std = np.asarray(obs_std, dtype=np.float32)
        self.obs_clip = float(obs_clip)
        self.env_id = env_id  # what the checkpoint names; informational only
        self.obs_inv_std = (1.0 / self.obs_std).astype(np.float32)  # as rollout() computes it
        self.batch_forward = BatchPolicy(spec)
        self.batch_forward.load(self.params[None, :])  # one member; its rows broadcast over a batch of observations

    def __call__(self, obs):
        """One observation (obs_dim,) -> one action; a batch (n, obs_dim) -> n actions.

        Discrete actions are int64 indices, continuous ones float32 vectors inside the action bounds.
        """
        x = np.array(obs, dtype=np.float32)  # a copy: normalised in place below
        single = x.ndim == 1
        if x.shape[-1:] != (self.spec.obs_dim,) or x.ndim > 2:
            raise ValueError(f"expected observations of shape ({self.spec.obs_dim},) or (n, {self.spec.obs_dim}), "
                             f"got {x.shape}")
        x = x.reshape(-1, self.spec.obs_dim)
        x -= self.obs_mean
        x *= self.obs_inv_std
        np.clip(x, np.float32(-self.obs_clip), np.float32(self.obs_clip), out=x)
        actions = self.batch_forward(x)
        return actions[0] if single else actions

    def torch_module(self):
        """A torch.nn.Module taking raw float32 observations, with the normalisation inside (needs torch)."""
        from .torch_policy import NormalizedPolicy

        return NormalizedPolicy(self.spec, self.params, self.obs_mean, self.obs_inv_std, self.obs_clip)

    def check_env(self, env) -> None:
        """Raise ConfigError unless `env`'s observation and action spaces are the ones the policy was trained on."""
        from .policy import spec_for

        try:
            actual = spec_for(env, self.spec.kind, self.spec.hidden_sizes, self.spec.activation,
                              self.spec.clip_actions)
        except ValueError as e:
            raise ConfigError(f"environment {env}: {e}") from None
        if actual != self.spec:
            raise ConfigError(f"the policy ({self.spec.obs_dim} -> {self.spec.act_dim}"
                              f"{', discrete' if self.spec.discrete else ''}) does not fit environment {env} "
                              f"({actual.obs_dim} -> {actual.act_dim}{', discrete' if actual.discrete else ''})")


def load_policy(path: str | Path, env=None) -> TrainedPolicy:
    """Load a checkpoint's policy; with `env` (a gymnasium.Env you made), check that the policy fits it.

    Raises CheckpointError for an unusable file, ConfigError for a policy that does not fit `env`.
    """
    policy = policy_from_state(load(path, legacy=True), str(path))  # read-only use: schema 1 and 2 files too
    if env is not None:
        policy.check_env(env)
    return policy


def policy_from_state(state, source: str = "checkpoint") -> TrainedPolicy:
    """The policy held by a loaded TrainState; ConfigError (naming `source`) when its numbers do not add up."""
    try:
        spec = PolicySpec.from_dict(state.policy)
    except TypeError as e:
        raise ConfigError(f"{source} holds an unreadable policy description ({e})") from None
    params = np.asarray(state.params, dtype=np.float32)
    if params.shape != (spec.num_params,):
        raise ConfigError(f"{source}: {params.size} parameters stored, the policy needs {spec.num_params}")
    cfg = state.config
    norm = ObsNorm(spec.obs_dim, float(cfg.get("obs_clip", 5.0)), bool(cfg.get("obs_norm", True)),
                   float(cfg.get("obs_std_floor", 1e-2)))
    try:
        norm.load_state_dict(state.obs_norm)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{source}: unusable observation statistics ({e})") from None
    mean, std = norm.mean_std()
    return TrainedPolicy(spec, params, mean, std, norm.clip, str(cfg.get("env", "")))
