"""Gradient-ascent optimizers as pure functions of explicit state.

An optimizer object holds only its hyperparameters (frozen); its state is a
flat dict of numpy arrays (`t`, and the moments `m`, `v` where it has them)
that `init` creates and `step` maps to a new dict without touching the old
one, so a strategy can carry it inside its own state and a checkpoint can
restore it bit for bit. All of them *ascend*: `step` moves theta along +grad.

A step is elementwise, so it may be given a range of the dimensions (theta,
grad and the moments cut to it); `total` then sums over all of them (see
dims.py), which only ClipUp needs, for its norms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .dims import Whole

State = dict  # name -> np.ndarray


@dataclass(frozen=True)
class Optimizer:
    lr: float
    name = "base"

    moments = ()  # names of the per-parameter state vectors (a class attribute, not a field)

    def init(self, dim: int) -> State:
        return {"t": np.int64(0), **{k: np.zeros(dim, dtype=np.float32) for k in self.moments}}

    def step(self, state: State, theta: np.ndarray, grad: np.ndarray,
             total: Callable | None = None) -> tuple[np.ndarray, State]:
        """(new theta, new state); `state` and `theta` are left as they were. `total(*vectors)`: the sums of
        vectors over all dimensions when theta is one range of them (default: theta is all of them)."""
        t = int(state["t"]) + 1
        update, moments = self._update(state, t, grad, total or Whole(theta.size).total)
        return (theta + update).astype(theta.dtype, copy=False), {"t": np.int64(t), **moments}

    def _update(self, state: State, t: int, grad: np.ndarray, total: Callable) -> tuple[np.ndarray, dict]:
        raise NotImplementedError


@dataclass(frozen=True)
class GD(Optimizer):
    """Plain gradient step theta + lr * grad: the update the SNES paper writes down."""

    name = "gd"

    def _update(self, state, t, grad, total):
        return (self.lr * grad).astype(np.float32), {}


@dataclass(frozen=True)
class SGD(Optimizer):
    """SGD with momentum, as in the OpenAI ES starter: v <- m v + (1-m) g."""

    momentum: float = 0.9
    name = "sgd"
    moments = ("v",)

    def _update(self, state, t, grad, total):
        v = self.momentum * state["v"] + (1.0 - self.momentum) * grad.astype(np.float32)
        return self.lr * v, {"v": v}


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    name = "adam"
    moments = ("m", "v")

    def _update(self, state, t, grad, total):
        g = grad.astype(np.float32)
        m = self.beta1 * state["m"] + (1.0 - self.beta1) * g
        v = self.beta2 * state["v"] + (1.0 - self.beta2) * (g * g)
        a = self.lr * np.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        return (a * m / (np.sqrt(v) + self.eps)).astype(np.float32), {"m": m, "v": v}


@dataclass(frozen=True)
class ClipUp(Optimizer):
    """ClipUp (Toklu et al. 2020): normalised gradient, momentum, and a speed cap.

    The step length is set by `lr` and bounded by `max_speed` (default 2 lr)
    regardless of the gradient's scale, which makes one learning rate work across tasks.
    """

    momentum: float = 0.9
    max_speed: float = 0.0
    name = "clipup"
    moments = ("v",)

    def _update(self, state, t, grad, total):
        g = grad.astype(np.float32)
        norm = math.sqrt(total(np.square(g, dtype=np.float64))[0])
        step = self.lr * g / norm if norm > 0 else np.zeros_like(g)
        v = self.momentum * state["v"] + step
        cap = self.max_speed or 2.0 * self.lr
        speed = math.sqrt(total(np.square(v, dtype=np.float64))[0])
        if speed > cap:
            v = v * np.float32(cap / speed)
        return v, {"v": v}


OPTIMIZERS = {cls.name: cls for cls in (Adam, SGD, ClipUp, GD)}


def make_optimizer(name: str, lr: float, momentum: float = 0.9) -> Optimizer:
    if name == "adam":
        return Adam(lr)
    if name == "sgd":
        return SGD(lr, momentum)
    if name == "clipup":
        return ClipUp(lr, momentum)
    if name == "gd":
        return GD(lr)
    raise ValueError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")
