"""Making environments: registered gymnasium ids or a user's own 'module:Class'."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from dataclasses import dataclass

import gymnasium as gym

from .config import ConfigError

FALLBACK_MAX_STEPS = 1000
# MuJoCo 4 prints this for gymnasium's v5 XML files on every model load, from C.
_KNOWN_NOISE = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def _filtered_c_stderr():
    """Drop MuJoCo's known load-time deprecation lines (written by C to fd 2); pass the rest on."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [line for line in text.splitlines() if line.strip() and not any(k in line for k in _KNOWN_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


@dataclass
class EnvHandle:
    """The env to step (unwrapped when that is safe: the wrappers cost per step) and its step limit."""

    env: gym.Env
    max_steps: int
    outer: gym.Env  # what to close


def _from_entry(spec: str, kwargs: dict, render_mode):
    """'module:Class' or 'module:factory' -> an env; 'module:Env-v0' imports module, which registers Env-v0."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import environment module {module_name!r}: {e}") from None
    if attr in gym.registry:
        return None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
    if render_mode is not None:
        kwargs = {**kwargs, "render_mode": render_mode}
    if not callable(factory):
        raise ConfigError(f"{spec} is not a class or function that makes an environment")
    try:
        env = factory(**kwargs)
    except TypeError as e:  # it does not take these arguments (e.g. os:system): bad input, not a crash
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"{spec}(**env_kwargs) failed: {type(e).__name__}: {first}") from None
    if not isinstance(env, gym.Env):
        raise ConfigError(f"{spec} did not return a gymnasium.Env (got {type(env).__name__})")
    return env


def make_env(env_id: str, kwargs: dict | None = None, max_episode_steps: int = 0, render_mode=None) -> EnvHandle:
    kwargs = dict(kwargs or {})
    if ":" in env_id and env_id not in gym.registry:
        env = _from_entry(env_id, kwargs, render_mode)
        if env is None:  # the module registered a gymnasium id
            return make_env(env_id.partition(":")[2], kwargs, max_episode_steps, render_mode)
        limit = max_episode_steps or getattr(getattr(env, "spec", None), "max_episode_steps", None) or FALLBACK_MAX_STEPS
        return EnvHandle(env, int(limit), env)
    if env_id not in gym.registry:
        close = [k for k in gym.registry if k.split("-v")[0].lower() == env_id.split("-v")[0].lower()]
        hint = f" (did you mean {', '.join(sorted(close)[:3])}?)" if close else ""
        raise ConfigError(f"unknown environment id {env_id!r}{hint}")
    try:
        with _filtered_c_stderr():
            if render_mode is not None:
                kwargs["render_mode"] = render_mode
            outer = gym.make(env_id, disable_env_checker=True, **kwargs)
    except gym.error.Error as e:
        raise ConfigError(f"cannot make {env_id!r}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"bad --env-kwargs for {env_id!r}: {e}") from None
    limit = max_episode_steps or outer.spec.max_episode_steps or FALLBACK_MAX_STEPS
    plain = not outer.spec.additional_wrappers
    return EnvHandle(outer.unwrapped if plain else outer, int(limit), outer)
