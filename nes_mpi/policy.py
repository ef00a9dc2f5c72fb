"""Policies: the architecture spec, initial parameters, and a batched numpy forward for rollouts.

The torch module (`torch_policy.TorchPolicy`) is what a user loads from a
checkpoint; its `parameters()` order is the flat layout used here. Rollouts use
`BatchPolicy`, which evaluates many members at once from their flat parameter
rows with numpy: per step a torch call costs several times the numpy maths, and
ES spends millions of steps in this loop. Each member's rows go through the
same sequence of per-member operations whatever the batch size, so a member's
actions do not depend on how the population is split across ranks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _np_act(name):
    if name == "tanh":
        return lambda x: np.tanh(x, out=x)
    if name == "relu":
        return lambda x: np.maximum(x, 0, out=x)
    if name == "elu":
        return lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
    if name == "selu":
        a, s = 1.6732632423543772, 1.0507009873554805
        return lambda x: s * np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))
    if name == "sigmoid":
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    raise ValueError(name)


@dataclass(frozen=True)
class PolicySpec:
    """Everything needed to rebuild a policy: stored in every checkpoint."""

    kind: str  # "mlp" or "linear"
    obs_dim: int
    act_dim: int
    discrete: bool
    hidden_sizes: tuple = ()
    activation: str = "tanh"
    action_low: tuple = ()
    action_high: tuple = ()
    clip_actions: bool = True  # False: unsquashed actions go to the env raw (ARS); the env clamps them

    @property
    def layer_sizes(self) -> list[int]:
        hidden = list(self.hidden_sizes) if self.kind == "mlp" else []
        return [self.obs_dim, *hidden, self.act_dim]

    @property
    def num_params(self) -> int:
        s = self.layer_sizes
        return sum(s[i] * s[i + 1] + s[i + 1] for i in range(len(s) - 1))

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("hidden_sizes", "action_low", "action_high"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PolicySpec":
        d = dict(d)
        for k in ("hidden_sizes", "action_low", "action_high"):
            d[k] = tuple(d.get(k, ()))
        return cls(**d)


def spec_for(env, kind: str, hidden_sizes, activation: str, clip_actions: bool = True) -> PolicySpec:
    """Read observation and action shapes off a gymnasium environment."""
    from gymnasium import spaces

    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"observation space must be a flat Box, got {obs_space}")
    if isinstance(act_space, spaces.Discrete):
        return PolicySpec(kind, int(obs_space.shape[0]), int(act_space.n), True, tuple(hidden_sizes), activation)
    if isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
        return PolicySpec(kind, int(obs_space.shape[0]), int(act_space.shape[0]), False, tuple(hidden_sizes),
                          activation, tuple(float(x) for x in act_space.low), tuple(float(x) for x in act_space.high),
                          bool(clip_actions))
    raise ValueError(f"action space must be Discrete or a flat Box, got {act_space}")


def initial_params(spec: PolicySpec, seed: int) -> np.ndarray:
    """Deterministic initial parameters from the seed, in the torch module's layout.

    The distribution of torch.nn.Linear's default init (weights and biases uniform in
    +-1/sqrt(fan_in)), drawn with numpy so that ranks need not import torch (~190 MB
    per process); the last layer is scaled by 0.1 and its bias zeroed, so a new policy
    starts with small actions.
    """
    rng = np.random.default_rng([int(seed), 0x1417])
    sizes = spec.layer_sizes
    parts = []
    for i in range(len(sizes) - 1):
        n_in, n_out = sizes[i], sizes[i + 1]
        bound = 1.0 / np.sqrt(n_in)
        w = rng.uniform(-bound, bound, size=(n_out, n_in))
        b = rng.uniform(-bound, bound, size=n_out)
        if i == len(sizes) - 2:
            w *= 0.1
            b[:] = 0.0
        parts += [w.ravel(), b]
    return np.concatenate(parts).astype(np.float32)


class BatchPolicy:
    """Numpy forward of B members at once, each with its own flat parameter row."""

    def __init__(self, spec: PolicySpec):
        self.spec = spec
        self.sizes = spec.layer_sizes
        self.act = _np_act(spec.activation)
        self.squash = (not spec.discrete and spec.kind == "mlp"
                       and bool(np.all(np.isfinite(spec.action_low + spec.action_high))))
        self.clip = bool(spec.clip_actions)  # looked up once, not on every step of the rollout
        if not spec.discrete:
            self.low = np.asarray(spec.action_low, dtype=np.float32)
            self.high = np.asarray(spec.action_high, dtype=np.float32)
            self.half_range = (self.high - self.low) * np.float32(0.5)
        self.all_weights: list[tuple[np.ndarray, np.ndarray]] = []
        self.weights = self.all_weights

    def load(self, params: np.ndarray) -> None:
        """Take a (B, num_params) float32 matrix; keep per-layer (B, out, in) and (B, out) arrays."""
        params = np.ascontiguousarray(params, dtype=np.float32)
        b = params.shape[0]
        self.all_weights = []
        pos = 0
        for i in range(len(self.sizes) - 1):
            n_in, n_out = self.sizes[i], self.sizes[i + 1]
            w = params[:, pos : pos + n_in * n_out].reshape(b, n_out, n_in)
            pos += n_in * n_out
            bias = params[:, pos : pos + n_out]
            pos += n_out
            self.all_weights.append((np.ascontiguousarray(w), np.ascontiguousarray(bias)))
        self.weights = self.all_weights

    def set_row(self, b: int, row: np.ndarray) -> None:
        """Put one member's flat parameters into loaded row b (a slot that moves on to its next member)."""
        pos = 0
        for w, bias in self.all_weights:
            n_out, n_in = w.shape[1:]
            w[b] = row[pos : pos + n_in * n_out].reshape(n_out, n_in)
            pos += n_in * n_out
            bias[b] = row[pos : pos + n_out]
            pos += n_out

    def select(self, rows=None) -> None:
        """Work on a subset of the loaded members from now on (None: all). Copies once, not per step."""
        if rows is None:
            self.weights = self.all_weights
        else:
            self.weights = [(w[rows], b[rows]) for w, b in self.all_weights]

    def __call__(self, x: np.ndarray, rows=None) -> np.ndarray:
        """x: (n, obs_dim) float32 for the selected members (or for `rows` of the loaded ones)."""
        if rows is not None:
            self.select(rows)
        last = len(self.weights) - 1
        h = x
        for i, (w, b) in enumerate(self.weights):
            h = np.matmul(w, h[:, :, None])[:, :, 0]
            h += b
            if i < last:
                h = self.act(h)
        if self.spec.discrete:
            return h.argmax(axis=1)
        if self.squash:
            np.tanh(h, out=h)
            return self.low + (h + np.float32(1.0)) * self.half_range
        return np.clip(h, self.low, self.high) if self.clip else h
