"""The policy as a torch module: what users load from a checkpoint, and the layout reference.

Kept apart from `policy.py` so that training ranks never import torch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .policy import PolicySpec

_TORCH_ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU, "sigmoid": nn.Sigmoid}


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
        self.clip = bool(spec.clip_actions)
        self.discrete = bool(spec.discrete)  # plain attributes, so that torch.jit.script can compile forward()
        self.register_buffer("low", torch.tensor(spec.action_low, dtype=torch.float32))
        self.register_buffer("high", torch.tensor(spec.action_high, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised observation -> action (continuous) or action index (discrete)."""
        out = self.net(obs)
        if self.discrete:
            return out.argmax(-1)
        if self.squash:
            return self.low + (torch.tanh(out) + 1.0) * 0.5 * (self.high - self.low)
        if self.clip:
            return torch.clamp(out, self.low, self.high)
        return out


def get_flat(module: nn.Module) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(module.parameters()).detach().numpy().astype(np.float32)


def set_flat(module: nn.Module, theta: np.ndarray) -> nn.Module:
    torch.nn.utils.vector_to_parameters(torch.as_tensor(np.asarray(theta, dtype=np.float32)), module.parameters())
    return module


def build_torch(spec: PolicySpec, theta: np.ndarray) -> TorchPolicy:
    return set_flat(TorchPolicy(spec), theta)


class NormalizedPolicy(nn.Module):
    """Raw float32 observation(s) -> action(s): the training normalisation and clipping, then the policy.

    What `nes_mpi.load_policy(...).torch_module()` returns and `python -m nes_mpi export` writes.
    """

    def __init__(self, spec: PolicySpec, theta: np.ndarray, obs_mean: np.ndarray, obs_inv_std: np.ndarray,
                 obs_clip: float):
        super().__init__()
        self.policy = build_torch(spec, theta)
        self.register_buffer("obs_mean", torch.as_tensor(np.asarray(obs_mean, dtype=np.float32)))
        self.register_buffer("obs_inv_std", torch.as_tensor(np.asarray(obs_inv_std, dtype=np.float32)))
        self.obs_clip = float(obs_clip)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = torch.clamp((obs - self.obs_mean) * self.obs_inv_std, -self.obs_clip, self.obs_clip)
        return self.policy(x)
