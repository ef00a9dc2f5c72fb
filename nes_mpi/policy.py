"""Policies: torch modules for the architecture, a batched numpy forward for rollouts.

The torch module defines the parameter layout (the order of `parameters()`),
the initialisation and what a user loads from a checkpoint. Rollouts use
`BatchPolicy`, which evaluates many members at once from their flat parameter
rows with numpy: per step a torch call costs several times the numpy maths, and
ES spends millions of steps in this loop. Each member's rows go through the
same sequence of per-member operations whatever the batch size, so a member's
actions do not depend on how the population is split across ranks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

_TORCH_ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU, "sigmoid": nn.Sigmoid}


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


def spec_for(env, kind: str, hidden_sizes, activation: str) -> PolicySpec:
    """Read observation and action shapes off a gymnasium environment."""
    from gymnasium import spaces

    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"observation space must be a flat Box, got {obs_space}")
    if isinstance(act_space, spaces.Discrete):
        return PolicySpec(kind, int(obs_space.shape[0]), int(act_space.n), True, tuple(hidden_sizes), activation)
    if isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
        return PolicySpec(kind, int(obs_space.shape[0]), int(act_space.shape[0]), False, tuple(hidden_sizes),
                          activation, tuple(float(x) for x in act_space.low), tuple(float(x) for x in act_space.high))
    raise ValueError(f"action space must be Discrete or a flat Box, got {act_space}")


class TorchPolicy(nn.Module):
    """The policy as a torch module (for users, export and as the layout reference)."""

    def __init__(self, spec: PolicySpec):
        super().__init__()
        self.spec = spec
        sizes = spec.layer_sizes
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(_TORCH_ACT[spec.activation]())
        self.net = nn.Sequential(*layers)
        bounded = not spec.discrete and spec.kind == "mlp" and np.all(np.isfinite(spec.action_low + spec.action_high))
        self.squash = bool(bounded)
        if not spec.discrete:
            self.register_buffer("low", torch.tensor(spec.action_low, dtype=torch.float32))
            self.register_buffer("high", torch.tensor(spec.action_high, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised observation -> action (continuous) or action index (discrete)."""
        out = self.net(obs)
        if self.spec.discrete:
            return out.argmax(-1)
        if self.squash:
            return self.low + (torch.tanh(out) + 1.0) * 0.5 * (self.high - self.low)
        return torch.clamp(out, self.low, self.high)


def initial_params(spec: PolicySpec, seed: int) -> np.ndarray:
    """Deterministic initial parameters: torch's default init, last layer scaled by 0.1."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    module = TorchPolicy(spec)
    torch.random.set_rng_state(gen_state)
    with torch.no_grad():
        last = module.net[-1]
        last.weight.mul_(0.1)
        last.bias.zero_()
    return get_flat(module)


def get_flat(module: nn.Module) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(module.parameters()).detach().numpy().astype(np.float32)


def set_flat(module: nn.Module, theta: np.ndarray) -> nn.Module:
    torch.nn.utils.vector_to_parameters(torch.as_tensor(np.asarray(theta, dtype=np.float32)), module.parameters())
    return module


def build_torch(spec: PolicySpec, theta: np.ndarray) -> TorchPolicy:
    return set_flat(TorchPolicy(spec), theta)


class BatchPolicy:
    """Numpy forward of B members at once, each with its own flat parameter row."""

    def __init__(self, spec: PolicySpec):
        self.spec = spec
        self.sizes = spec.layer_sizes
        self.act = _np_act(spec.activation)
        self.squash = (not spec.discrete and spec.kind == "mlp"
                       and bool(np.all(np.isfinite(spec.action_low + spec.action_high))))
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
        return np.clip(h, self.low, self.high)
