"""One typed configuration object shared by the CLI, TOML files, checkpoints and logs.

Precedence: defaults < TOML file (--config) < command line. On resume the
checkpoint's config takes the place of the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT_ENV = "HalfCheetah-v5"
ACTIVATIONS = ("tanh", "relu", "elu", "selu", "sigmoid")
POLICIES = ("mlp", "linear")
OPTIMIZER_NAMES = ("adam", "sgd", "clipup", "gd")
STRATEGY_NAMES = ("openai", "snes", "pgpe")
SHAPING_NAMES = ("ranks", "utilities", "zscore")
SCHEDULES = ("dynamic", "static")
# What "auto" (an unset option) means for each strategy: each paper's own choice.
STRATEGY_DEFAULTS = {
    "openai": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.005, "shaping": "ranks"},
    "snes": {"optimizer": "gd", "lr": 1.0, "weight_decay": 0.0, "shaping": "utilities"},
    "pgpe": {"optimizer": "clipup", "lr": 0.04, "weight_decay": 0.0, "shaping": "ranks"},  # lr: sigma sqrt(d) / 36 at the defaults
}


class ConfigError(ValueError):
    """Bad user input: reported as one line, exit code 2."""


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    # task
    env: str = _f(DEFAULT_ENV, "gymnasium id, or 'module:Class' / 'module:factory' of your own env")
    env_kwargs: dict = _f(None, "keyword arguments for the environment, as JSON", meta="JSON")
    max_episode_steps: int = _f(0, "episode step limit (0: the environment's own)")
    episodes_per_member: int = _f(1, "episodes averaged into each member's fitness")
    survival_bonus: float = _f(0.0, "subtracted from the training fitness per step (e.g. 1.0 for Hopper); eval returns are unchanged")
    # policy
    policy: str = _f("mlp", "policy kind", choices=POLICIES)
    hidden_sizes: tuple = _f((64, 64), "hidden layer sizes of the MLP, comma separated", meta="N,N")
    activation: str = _f("tanh", "MLP activation", choices=ACTIVATIONS)
    obs_norm: bool = _f(True, "normalise observations with running statistics pooled over all ranks")
    obs_clip: float = _f(5.0, "clip normalised observations to [-c, c] (not used with --no-obs-norm: raw observations)")
    obs_std_floor: float = _f(1e-2, "smallest std an observation is divided by (ARS: about 0, so that nearly "
                              "constant entries count as much as the others)")
    clip_actions: bool = _f(True, "clip a linear policy's actions to the action space (off: they reach the env raw, "
                            "as in ARS: MuJoCo clamps the controls, the control cost sees the raw action)")
    # strategy
    strategy: str = _f("openai", "search strategy: openai (Salimans et al. 2017), snes (separable NES, Wierstra et al. 2014), "
                       "pgpe (Sehnke et al. 2010)", choices=STRATEGY_NAMES)
    generations: int = _f(100, "train until this many generations in total")
    timesteps: int = _f(0, "also stop at the end of the generation in which the run's timesteps reach N (0: no budget)")
    population: int = _f(40, "members per generation (even with antithetic pairs)")
    antithetic: bool = _f(True, "mirrored pairs theta +- sigma eps")
    sigma: float = _f(0.02, "perturbation scale (snes, pgpe: the initial value of every parameter's sigma)")
    lr: float = _f(None, "learning rate of the mean (auto: openai 0.01, snes 1 (eta_mu), pgpe 0.04)", kind=float)
    optimizer: str = _f(None, "optimizer of the mean (auto: openai adam, snes gd, pgpe clipup)", kind=str,
                        choices=OPTIMIZER_NAMES)
    momentum: float = _f(0.9, "momentum of sgd and clipup")
    weight_decay: float = _f(None, "L2 coefficient, applied after the 1/sigma scaling (openai: OpenAI ES l2coeff / sigma) "
                             "(auto: openai 0.005, snes and pgpe 0)", kind=float)
    sigma_lr: float = _f(0.0, "learning rate of sigma (0: snes (3 + ln d) / (5 sqrt d), pgpe 0.1)")
    sigma_max_change: float = _f(0.2, "pgpe: largest relative change of sigma per generation")
    shaping: str = _f(None, "fitness shaping: ranks (centered ranks), utilities (NES utility values), zscore (returns "
                      "standardised over the generation, as ARS) (auto: openai and pgpe ranks, snes utilities)", kind=str,
                      choices=SHAPING_NAMES)
    top_directions: float = _f(1.0, "fraction of antithetic directions kept, best first, averaged over the members kept (ARS V1-t/V2-t on ranks); 1: all")
    seed: int = _f(0, "the one common seed: noise, offsets and episode seeds derive from it")
    noise_table_size: int = _f(1 << 25, "normals in the shared noise table (float32, one copy per node)")
    # evaluation, logging, checkpoints
    eval_every: int = _f(10, "evaluate the mean policy every N generations (0: never)")
    eval_episodes: int = _f(10, "episodes per evaluation, spread over ranks")
    log_every: int = _f(1, "print a line every N generations (the CSV gets every generation)")
    run_dir: str = _f("", "run directory (default runs/<env>-seed<seed>)")
    checkpoint_every: int = _f(10, "write a checkpoint every N generations (and at the end)")
    keep_checkpoints: int = _f(3, "checkpoints kept besides best.h5")
    check_every: int = _f(5, "compare a hash of the parameters across ranks every N generations")
    tensorboard: bool = _f(False, "also write the log's scalars for TensorBoard to RUN_DIR/tb (needs the tensorboard extra)")
    # failures
    fail_fraction: float = _f(0.5, "a generation fails when this fraction of its members failed, or every member of a rank")
    fail_generations: int = _f(3, "stop with an error after N failed generations in a row (0: never)")
    # parallelism
    schedule: str = _f("static", "members to ranks: static (fixed slices) or dynamic (a rank that is done takes unstarted "
                       "members of slower ranks on its node); the results are the same bits", choices=SCHEDULES)

    def __post_init__(self):
        if self.env_kwargs is None:
            self.env_kwargs = {}
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        for k, v in STRATEGY_DEFAULTS.get(self.strategy, STRATEGY_DEFAULTS["openai"]).items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if not self.run_dir:
            self.run_dir = str(Path("runs") / f"{self.env.replace(':', '_').replace('/', '_')}-seed{self.seed}")

    # ---- validation --------------------------------------------------------------
    def validate(self) -> "Config":
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)
        need(self.population >= 2, f"--population must be at least 2 (got {self.population})")
        need(not (self.antithetic and self.population % 2),
             f"--population must be even with antithetic pairs (got {self.population}); use an even number or --no-antithetic")
        need(self.strategy in STRATEGY_NAMES, f"--strategy must be one of {', '.join(STRATEGY_NAMES)} (got {self.strategy!r})")
        need(self.generations >= 0, f"--generations must be >= 0 (got {self.generations})")
        need(self.timesteps >= 0, f"--timesteps must be >= 0 (got {self.timesteps})")
        need(self.sigma_lr >= 0, f"--sigma-lr must be >= 0 (got {self.sigma_lr})")
        need(0 < self.sigma_max_change < 1, f"--sigma-max-change must be in (0, 1) (got {self.sigma_max_change})")
        need(self.strategy != "pgpe" or self.antithetic, "--strategy pgpe samples symmetric pairs: it needs --antithetic")
        need(self.top_directions == 1 or self.strategy == "openai", "--top-directions below 1 is for --strategy openai only")
        need(self.sigma > 0, f"--sigma must be > 0 (got {self.sigma})")
        need(self.lr > 0, f"--lr must be > 0 (got {self.lr})")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})")
        need(0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})")
        need(self.episodes_per_member >= 1, f"--episodes-per-member must be >= 1 (got {self.episodes_per_member})")
        need(self.max_episode_steps >= 0, f"--max-episode-steps must be >= 0 (got {self.max_episode_steps})")
        need(self.eval_every >= 0 and self.eval_episodes >= 1, "--eval-every must be >= 0 and --eval-episodes >= 1")
        need(self.log_every >= 1 and self.check_every >= 1, "--log-every and --check-every must be >= 1")
        need(self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1 (got {self.checkpoint_every})")
        need(self.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1 (got {self.keep_checkpoints})")
        need(0 < self.top_directions <= 1, f"--top-directions must be in (0, 1] (got {self.top_directions})")
        need(self.top_directions == 1 or self.antithetic, "--top-directions below 1 needs antithetic pairs")
        need(0 < self.fail_fraction <= 1, f"--fail-fraction must be in (0, 1] (got {self.fail_fraction})")
        need(self.fail_generations >= 0, f"--fail-generations must be >= 0 (got {self.fail_generations})")
        need(self.obs_clip > 0, f"--obs-clip must be > 0 (got {self.obs_clip})")
        need(self.obs_std_floor > 0, f"--obs-std-floor must be > 0 (got {self.obs_std_floor})")
        need(self.noise_table_size >= 1 << 16, "--noise-table-size must be at least 65536")
        need(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        need(self.policy in POLICIES, f"--policy must be one of {', '.join(POLICIES)} (got {self.policy!r})")
        need(self.activation in ACTIVATIONS, f"--activation must be one of {', '.join(ACTIVATIONS)}")
        need(self.optimizer in OPTIMIZER_NAMES, f"--optimizer must be one of {', '.join(OPTIMIZER_NAMES)}")
        need(self.shaping in SHAPING_NAMES, f"--shaping must be one of {', '.join(SHAPING_NAMES)} (got {self.shaping!r})")
        need(all(h >= 1 for h in self.hidden_sizes), f"--hidden-sizes must be positive (got {self.hidden_sizes})")
        need(isinstance(self.env_kwargs, dict), "--env-kwargs must be a JSON object")
        need(not self.tensorboard or importlib.util.find_spec("tensorboard") is not None,
             "--tensorboard needs the tensorboard package: pip install 'nes_mpi[tensorboard]' (or pip install tensorboard)")
        return self

    # ---- (de)serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        lines = []
        for k, v in self.to_dict().items():
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: "Config | None" = None) -> "Config":
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        values = base.to_dict() if base is not None else {}
        for k, v in d.items():
            values[k] = _coerce(names[k], v)
        return cls(**values)


# Fields that may change when resuming without altering what the run computes.
SAFE_ON_RESUME = {"generations", "timesteps", "eval_every", "eval_episodes", "log_every", "run_dir",
                  "checkpoint_every", "keep_checkpoints", "check_every", "tensorboard",
                  "fail_fraction", "fail_generations", "schedule"}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _coerce(f: dataclasses.Field, v):
    name = f.name
    default = f.default if f.default is not None else f.metadata.get("kind", str)()
    try:
        if isinstance(default, bool):
            if isinstance(v, str):
                if v.lower() in ("1", "true", "yes", "on"):
                    return True
                if v.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(v)
        if isinstance(default, int):
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return int(v)
        if isinstance(default, float):
            return float(v)
        if isinstance(default, tuple):
            if isinstance(v, str):
                v = [x for x in v.replace(" ", "").split(",") if x]
            return tuple(int(x) for x in v)
        if name == "env_kwargs":
            if isinstance(v, str):
                v = json.loads(v) if v.strip() else {}
            if not isinstance(v, dict):
                raise ValueError
            return v
        return str(v)
    except (TypeError, ValueError):
        raise ConfigError(f"bad value for {name}: {v!r}") from None


PRESETS = Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, or a shipped preset by name (`hopper` -> nes_mpi/presets/hopper.toml)."""
    p = Path(path)
    if not p.is_file() and p.suffix == "" and (PRESETS / f"{p.name}.toml").is_file():
        p = PRESETS / f"{p.name}.toml"
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (presets: {', '.join(preset_names())})")
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    for name in STRATEGY_NAMES:
        if name in data:
            if not isinstance(data[name], dict):
                raise ConfigError(f"config file {p}: [{name}] must be a table of options for --strategy {name}")
            data[name] = {k.replace("-", "_"): v for k, v in data[name].items()}
    return data


def merge_options(from_file: dict[str, Any], cli: dict[str, Any]) -> dict[str, Any]:
    """File options overridden by the command line, the file's per-strategy tables included."""
    merged = {**from_file, **cli}
    for name in STRATEGY_NAMES:
        if isinstance(merged.get(name), dict):
            merged[name] = {k: v for k, v in merged[name].items() if k not in cli}
    return merged


def strategy_options(options: dict[str, Any], default_strategy: str = "openai") -> dict[str, Any]:
    """Flatten options for the strategy in use: a table [snes] in a TOML file applies only with --strategy snes.

    Precedence: the file's top level < its table for the strategy < the command line
    (merge_options has already dropped the table entries the command line sets).
    """
    strategy = options.get("strategy", default_strategy)
    flat = {k: v for k, v in options.items() if k not in STRATEGY_NAMES}
    return {**flat, **options.get(strategy, {})}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --option per Config field; unspecified options stay absent (SUPPRESS)."""
    group = parser.add_argument_group("training configuration (also settable in the TOML file)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        default = f.default
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{meta['help']} [default: {_show(default)}]")
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        kw["metavar"] = meta.get("meta", (meta.get("kind") or type(default)).__name__.upper())
        if "choices" in meta:
            kw["choices"] = meta["choices"]
            kw["metavar"] = "{" + ",".join(meta["choices"]) + "}"
        group.add_argument(flag, type=str, **kw)


def _show(v):
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    if v is None or v == "":
        return "auto"
    return v
