"""The search strategies: one file each, the same pure init/ask/tell shape (see base.py)."""
from __future__ import annotations

from .base import GaussianStrategy, Sampling, State, UpdateInfo
from .openai import OpenAIES
from .pgpe import PGPE
from .snes import SNES

STRATEGIES = {cls.name: cls for cls in (OpenAIES, SNES, PGPE)}


def make_strategy(cfg, noise, dim: int) -> GaussianStrategy:
    """The strategy a Config asks for, over the given noise table and parameter count."""
    from ..optimizers import make_optimizer
    from ..shaping import SHAPINGS

    sampling = Sampling(noise, dim, cfg.population, cfg.antithetic)
    optimizer = make_optimizer(cfg.optimizer, cfg.lr, cfg.momentum)
    common = dict(sampling=sampling, sigma=cfg.sigma, optimizer=optimizer, weight_decay=cfg.weight_decay,
                  shaping=SHAPINGS[cfg.shaping])
    if cfg.strategy == "openai":
        return OpenAIES(**common, top_directions=cfg.top_directions)
    if cfg.strategy == "snes":
        return SNES(**common, sigma_lr=cfg.sigma_lr)
    if cfg.strategy == "pgpe":
        return PGPE(**common, sigma_lr=cfg.sigma_lr, sigma_max_change=cfg.sigma_max_change)
    raise ValueError(f"unknown strategy {cfg.strategy!r} (choose from {', '.join(STRATEGIES)})")


__all__ = ["GaussianStrategy", "OpenAIES", "PGPE", "SNES", "STRATEGIES", "Sampling", "State", "UpdateInfo",
           "make_strategy"]
