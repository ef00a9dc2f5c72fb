"""The training loop: every rank runs this same program on its slice of the population.

Per generation: roll out my members (my static slice, or with the dynamic schedule
also unstarted members of slower ranks on my node), building each one's parameters
from (theta, generation, noise); Allgatherv (member, fitness, return, steps,
observation sums) and place the rows in member order; then every rank applies the
identical strategy update and statistics update.
The strategy's state (mean, sigma, optimizer moments: whatever it keeps) is an
opaque dict here: the trainer passes it to ask/tell and to the checkpoint.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

from . import checkpoint as ckpt
from .checkpoint import TrainState
from .comm import SharedNoise, StopChannel, check_identical, gather_members, gather_rows, member_range
from .config import SAFE_ON_RESUME, Config, ConfigError, strategy_options
from .envs import make_env
from .fault_policy import FailureWatch
from .obs_norm import ObsNorm
from .policy import BatchPolicy, PolicySpec, initial_params, spec_for
from .rollout import RolloutResult, episode_seed, obs_count, rollout, rollout_stream
from .run_lock import RunDirBusy, RunLock
from .runlog import RunLog, console_line
from .signals import EXIT_PREEMPTED, StopRequest
from .status import write_status
from .strategies import make_strategy
from .work_queue import work_for

EVAL_STREAM = 1
EXIT_ERROR = 1
# Most members a rank steps in lockstep under the dynamic schedule (benchmarks/group_size.py: groups of 8
# step as fast per CPU second as all 40 members); the rest of the node's members stay unstarted, free to
# go to whichever rank is ready first.
LOCKSTEP_GROUP = 8


class StopFailed(RuntimeError):
    """Raised on every rank when the checkpoint after a stop could not be written (rank 0 said why)."""


class GenerationAbandoned(Exception):
    """Every rank agreed to stop during a generation: its partial work is dropped, the state at its start kept."""


class SystematicFailure(RuntimeError):
    """Raised on every rank when members kept failing (fault_policy); the last good state was checkpointed."""


def say(comm, *args, file=None):
    if comm.rank == 0:
        print(*args, file=file or sys.stdout, flush=True)


def noise_layout_line(lay: dict) -> str:
    """One console line on where the noise table lives: one copy per node is the design."""
    mib = lay["table_bytes"] / 2**20
    res = "" if lay["resident_bytes"] is None else f"; resident {lay['resident_bytes'] / 2**20:.1f} MiB summed over ranks"
    nodes = " | ".join(rank_list(r) for r in lay["node_ranks"])
    n = len(lay["owners"])
    return (f"nes_mpi: noise table: {n} {'copy' if n == 1 else 'copies'} of {mib:.1f} MiB on {len(lay['node_ranks'])} node(s) "
            f"(ranks {nodes}; owners {rank_list(lay['owners'])}{res})"
            + ("; update summed by each node's ranks together" if lay["update_split"] else ""))


def rank_list(ranks: list[int]) -> str:
    """Ranks as compact runs: [0, 1, 2, 5] -> '0-2,5'."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# The Allgatherv row of one member: these scalars, then its observation sums and sums of squares.
ROW_FITNESS, ROW_RETURN, ROW_STEPS, ROW_FAILED, ROW_OBS_COUNT, ROW_MEMBER = range(6)
ROW_SCALARS = 6


def row_doubles(obs_dim: int) -> int:
    return ROW_SCALARS + 2 * obs_dim


def pack_rows(res: RolloutResult) -> np.ndarray:
    """The members this rank ran as Allgatherv rows; each carries its member index, which places it."""
    od = res.obs_sum.shape[1]
    local = np.empty((len(res.fitness), row_doubles(od)))
    local[:, ROW_FITNESS] = res.fitness
    local[:, ROW_RETURN] = res.returns
    local[:, ROW_STEPS] = res.steps
    local[:, ROW_FAILED] = res.failed
    local[:, ROW_OBS_COUNT] = obs_count(res)
    local[:, ROW_MEMBER] = res.members
    local[:, ROW_SCALARS : ROW_SCALARS + od] = res.obs_sum
    local[:, ROW_SCALARS + od :] = res.obs_sumsq
    return local


def pooled_obs(full: np.ndarray, obs_dim: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The whole population's observation count, sum and sum of squares (the same bits on every rank)."""
    lo = ROW_SCALARS
    return (int(full[:, ROW_OBS_COUNT].sum()), full[:, lo : lo + obs_dim].sum(axis=0),
            full[:, lo + obs_dim :].sum(axis=0))


def idle_fraction(rank_seconds: np.ndarray) -> float:
    """1 - mean/max of the ranks' rollout times: the share of rollout time spent waiting for the slowest rank."""
    slowest = rank_seconds.max()
    return float(1 - rank_seconds.mean() / slowest) if slowest > 0 else 0.0


def moved_members(owner: np.ndarray, static_counts: np.ndarray) -> int:
    """Members run beyond their rank's static share, summed over ranks (0 with static slices)."""
    ran = np.bincount(owner, minlength=len(static_counts))
    return int(np.maximum(ran - static_counts, 0).sum())


@dataclass
class Setup:
    cfg: Config
    state: TrainState | None
    resumed_from: Path | None


def on_root(comm, fn):
    """Run `fn` on rank 0 only and hand every rank its result, or raise its error on every rank.

    Rank 0 alone touches the run directory and reads checkpoints (no open storm on a parallel
    filesystem); the other ranks get the outcome by broadcast and never block on a failed rank 0.
    """
    outcome = None
    if comm.rank == 0:
        try:
            outcome = (True, fn())
        except BaseException as e:  # KeyboardInterrupt too: the other ranks must not wait for ever
            comm.bcast((False, e if isinstance(e, (ConfigError, ckpt.CheckpointError)) else None), root=0)
            raise
    else:
        outcome = comm.bcast(None, root=0)
    if comm.rank == 0:
        comm.bcast(outcome, root=0)
    ok, value = outcome
    if not ok:
        raise value if value is not None else ConfigError("rank 0 failed (see its error)")
    return value


def _claim_and_read(run_dir: Path, resume: str | None, legacy: bool, explicit: bool) -> tuple[Path | None, TrainState | None]:
    """Rank 0: lock the run directory for this job, then find and read the checkpoint to resume.

    With --resume PATH and no --run-dir the run continues in the directory stored in PATH: lock that one.
    """
    if resume and resume != "auto":
        state = ckpt.load(resume, legacy=legacy)
        if not explicit:
            run_dir = Path(Config.from_dict(state.config).run_dir)
        _claim(run_dir)
        return Path(resume), state
    _claim(run_dir)
    if resume == "auto":
        path, state, skipped = ckpt.newest_good(run_dir, legacy)
        if path is None and skipped:  # never start afresh over a run's checkpoints
            raise ConfigError(f"none of the {len(skipped)} checkpoint(s) in {run_dir} can be resumed (newest: {skipped[0]})")
        for why in skipped:
            print(f"nes_mpi: warning: skipping {why}", file=sys.stderr, flush=True)
        return path, state
    if ckpt.list_checkpoints(run_dir):
        raise ConfigError(f"run directory {run_dir} already holds checkpoints: pass --resume auto to continue it, "
                          "or choose another --run-dir")
    return None, None


def _claim(run_dir: Path) -> None:
    """Take the run directory for this job (the lock lives until the process exits)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        notes = lock.acquire()
    except RunDirBusy as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot use run directory {run_dir}: {e.strerror or e}") from None
    for note in notes:
        print(f"nes_mpi: warning: {note}", file=sys.stderr, flush=True)


def _later_checkpoints(run_dir: Path, path: Path, generation: int) -> list[Path]:
    """Good checkpoints in run_dir past `generation`: resuming `path` there would fork the run.

    Corrupt ones do not count: --resume auto skips them anyway, and the resumed run overwrites them.
    """
    def later_than_path(p: Path) -> bool:
        try:
            return p.resolve() != path.resolve() and ckpt.load(p, legacy=True).generation > generation
        except ckpt.CheckpointError:
            return False

    later = [p for g, p in ckpt.list_checkpoints(run_dir) if g > generation and later_than_path(p)]
    best = ckpt.checkpoint_dir(run_dir) / "best.h5"
    if later and best.exists() and later_than_path(best):
        later.append(best)
    return later


def rewind(run_dir: Path, later: list[Path]) -> Path:
    """Move the abandoned branch (later checkpoints and the log) into a dated subfolder; nothing is deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = run_dir / f"rewound-{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = run_dir / f"rewound-{stamp}-{n}"
    aside.mkdir(parents=True)
    for p in [*later, run_dir / "log.csv"]:
        if p.exists():
            os.replace(p, aside / p.name)
    return aside


def resolve_config(comm, overrides: dict, resume: str | None, force: bool, rewind_ok: bool = False) -> Setup:
    """Decide fresh vs resume and the effective config. Same answer on every rank."""
    given = overrides
    overrides = strategy_options(given)
    fresh_cfg = Config.from_dict(overrides)
    run_dir = Path(overrides.get("run_dir") or fresh_cfg.run_dir)
    explicit = bool(overrides.get("run_dir"))
    path, state = on_root(comm, lambda: _claim_and_read(run_dir, resume, legacy=force, explicit=explicit))
    if path is None:
        return Setup(fresh_cfg.validate(), None, None)
    stored = Config.from_dict(state.config)
    if ":" in stored.env and "env" not in overrides:
        raise ConfigError(f"{path} names the environment {stored.env!r}, code that nes_mpi imports only when you name "
                          f"it yourself: pass --env {stored.env} to resume it")
    overrides = strategy_options(given, stored.strategy)  # a preset's [snes] table applies to a resumed snes run
    cfg = Config.from_dict(overrides, base=stored)
    changed = [k for k in overrides if k not in SAFE_ON_RESUME and getattr(cfg, k) != getattr(stored, k)]
    if changed and not force:
        desc = ", ".join(f"{k} {getattr(stored, k)!r} -> {getattr(cfg, k)!r}" for k in sorted(changed))
        raise ConfigError(f"cannot change {desc} when resuming {path} (the run would no longer be the same run); "
                          "pass --force to do it anyway")
    cfg.validate()
    target = Path(cfg.run_dir)

    def check_fork():
        later = _later_checkpoints(target, path, state.generation)
        if later and not rewind_ok:
            raise ConfigError(
                f"{path} is generation {state.generation} but {target} holds later checkpoints "
                f"({', '.join(p.name for p in later)}): resuming it would fork the run. Pass --rewind to move them and "
                "log.csv aside into a dated subfolder of the run directory, or choose another --run-dir")
        if later:
            aside = rewind(target, later)
            print(f"nes_mpi: rewound {target} to generation {state.generation}: moved {len(later)} later "
                  f"checkpoint(s) and log.csv into {aside}", flush=True)

    on_root(comm, check_fork)
    return Setup(cfg, state, path)


class Trainer:
    def __init__(self, comm: MPI.Comm, setup: Setup):
        self.comm = comm
        self.cfg = cfg = setup.cfg
        self.state = setup.state
        self.resumed_from = setup.resumed_from
        self.last_checkpoint: Path | None = setup.resumed_from  # newest checkpoint of this run, on every rank
        self.run_dir = Path(cfg.run_dir)
        if comm.size > cfg.population:
            raise ConfigError(f"more ranks ({comm.size}) than population members ({cfg.population}): "
                              "use fewer ranks or a larger --population")
        self.members = member_range(cfg.population, comm.size, comm.rank)
        self.eval_slots = member_range(cfg.eval_episodes, comm.size, comm.rank)
        n_envs = max(len(self.members), len(self.eval_slots), 1)
        first = make_env(cfg.env, cfg.env_kwargs, cfg.max_episode_steps)
        self.handles = [first] + [make_env(cfg.env, cfg.env_kwargs, cfg.max_episode_steps) for _ in range(n_envs - 1)]
        self.envs = [h.env for h in self.handles]
        self.max_steps = first.max_steps
        try:
            self.spec = spec_for(first.outer, cfg.policy, cfg.hidden_sizes, cfg.activation, cfg.clip_actions)
        except ValueError as e:
            raise ConfigError(f"environment {cfg.env!r}: {e}") from None
        if self.state is not None and PolicySpec.from_dict(self.state.policy) != self.spec:
            raise ConfigError(f"the checkpoint's policy {self.state.policy} does not fit environment {cfg.env!r}")
        self.dim = self.spec.num_params
        # NES_MPI_INJECT_DIVERGENCE=RANK:GEN[:ENTRY] perturbs the first number of one entry of RANK's strategy
        # state (default: the mean) after generation GEN, so that the tests can prove the cross-rank hash check
        # catches it. The perturbed entry is RANK's own copy; with the update split over a node (comm.NodeSplit)
        # the next update takes each range from the rank computing it, so the divergence lasts only if RANK
        # computes parameter 0 (the first rank of its node) or is alone on its node.
        inject = os.environ.get("NES_MPI_INJECT_DIVERGENCE", "").split(":")
        self._inject_divergence = (int(inject[0]), int(inject[1])) if len(inject) >= 2 else None
        self._inject_entry = inject[2] if len(inject) == 3 else "mean"
        # NES_MPI_DELAY_STOP_WRITE=SECONDS makes rank 0 wait before writing a stop checkpoint, so that the
        # tests can prove no rank exits before the checkpoint is durable, and can time a second Ctrl-C.
        self._delay_stop_write = float(os.environ.get("NES_MPI_DELAY_STOP_WRITE", "0") or 0)
        if self.dim > cfg.noise_table_size:
            raise ConfigError(f"--noise-table-size {cfg.noise_table_size} is smaller than the policy ({self.dim} parameters)")

    def setup_numerics(self):
        cfg, comm = self.cfg, self.comm
        self.shared_noise = SharedNoise(comm, cfg.noise_table_size, cfg.seed)
        self.noise = self.shared_noise.noise_table(cfg.seed)
        node = self.shared_noise.node if self.shared_noise.win is not None else None
        self.work = work_for(cfg.schedule, comm, node, cfg.population, LOCKSTEP_GROUP)
        self.static_counts = np.array([len(member_range(cfg.population, comm.size, r)) for r in range(comm.size)])
        try:
            self.strategy = make_strategy(cfg, self.noise, self.dim)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        vectors = [k for k, v in self.strategy.init(np.zeros(self.dim)).items() if np.ndim(v)]
        self.update_part = self.shared_noise.update_part(self.dim, vectors)  # this rank's range of the update
        say(comm, noise_layout_line(self.shared_noise.layout(comm)))
        self.obs_norm = ObsNorm(self.spec.obs_dim, cfg.obs_clip, cfg.obs_norm, cfg.obs_std_floor)
        self.policy = BatchPolicy(self.spec)
        s = self.state
        if s is None:
            self.sstate = self.strategy.init(initial_params(self.spec, cfg.seed))
            self.generation = self.timesteps = self.episodes = 0
            self.wall_seconds = 0.0
            self.eval_return = self.best_eval_return = -math.inf
            history = None
        else:
            before = Config.from_dict(s.config)
            if (before.strategy, before.optimizer) == (cfg.strategy, cfg.optimizer):
                try:
                    self.sstate = self.strategy.restore({**s.strategy, "mean": s.params})
                except ValueError as e:
                    raise ConfigError(f"{self.resumed_from}: {e}") from None
            else:  # only with --force: another strategy's sigma or another optimizer's moments mean nothing here
                say(comm, f"nes_mpi: strategy/optimizer changed from {before.strategy}/{before.optimizer} to "
                          f"{cfg.strategy}/{cfg.optimizer}: continuing from the stored mean with a fresh state")
                self.sstate = self.strategy.init(s.params)
            self.obs_norm.load_state_dict(s.obs_norm)
            self.generation, self.timesteps, self.episodes = s.generation, s.timesteps, s.episodes
            self.wall_seconds = s.wall_seconds
            self.eval_return, self.best_eval_return = s.eval_return, s.best_eval_return
            history = s.history
        self.log = RunLog(self.run_dir, history, active=comm.rank == 0, tensorboard=cfg.tensorboard)
        if comm.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(self.cfg.to_toml())

    # ---- one generation ------------------------------------------------------------------
    @property
    def theta(self) -> np.ndarray:
        """The mean of the search distribution: the policy that is evaluated and saved as /params."""
        return self.sstate["mean"]

    def state_bytes(self, sstate: dict | None = None) -> np.ndarray:
        """The strategy's whole state (mean, sigma, optimizer moments) as one byte vector, for the cross-rank hash."""
        sstate = self.sstate if sstate is None else sstate
        return np.frombuffer(b"".join(np.ascontiguousarray(sstate[k]).tobytes() for k in sorted(sstate)),
                             dtype=np.uint8)

    def finished(self) -> bool:
        """The run has done its generations, or its timesteps budget (checked at the end of a generation)."""
        cfg = self.cfg
        return self.generation >= cfg.generations or (cfg.timesteps > 0 and self.timesteps >= cfg.timesteps)

    def evaluate(self, generation: int) -> tuple[float, float, int]:
        """Mean and std return of the mean policy over eval_episodes, spread over ranks."""
        cfg = self.cfg
        slots = list(self.eval_slots)
        mine = np.zeros((len(slots), 2))
        if slots:
            seeds = [[episode_seed(cfg.seed, generation, j, 0, EVAL_STREAM)] for j in slots]
            mean, std = self.obs_norm.mean_std()
            params = np.repeat(self.theta[None, :], len(slots), axis=0)
            res = rollout(self.envs[: len(slots)], self.max_steps, self.policy, params, seeds, mean, std,
                          self.obs_norm.clip, collect_obs=False, poll=self.channel.poll)
            if res is not None:
                mine[:, 0] = res.returns
                mine[:, 1] = res.steps
        if self.channel.agree():
            raise GenerationAbandoned
        every = gather_rows(self.comm, mine, cfg.eval_episodes)
        ok = every[np.isfinite(every[:, 0]), 0]
        if ok.size < len(every):  # a failed episode must not turn the evaluation (and best.h5) into NaN
            say(self.comm, f"nes_mpi: warning: generation {generation}: {len(every) - ok.size} of {len(every)} "
                           f"evaluation episodes failed (non-finite); the eval return is the mean of the others",
                file=sys.stderr)
        if not ok.size:
            return math.nan, math.nan, int(every[:, 1].sum())
        return float(np.mean(ok)), float(np.std(ok)), int(every[:, 1].sum())

    def step(self) -> dict:
        cfg, g = self.cfg, self.generation
        sstate = self.sstate
        mean, std = self.obs_norm.mean_std()
        t_roll = time.perf_counter()
        self.work.start(g)
        res = rollout_stream(self.envs[: self.work.slots], self.max_steps, self.policy, self.work.take,
                             lambda members: self.strategy.ask(sstate, g, members),
                             lambda m: [episode_seed(cfg.seed, g, m, e) for e in range(cfg.episodes_per_member)],
                             mean, std, self.obs_norm.clip, cfg.survival_bonus, collect_obs=cfg.obs_norm,
                             poll=self.channel.poll)
        t_roll = time.perf_counter() - t_roll
        if self.channel.agree():  # every rank, whether its rollout finished or was cut short by a stop
            raise GenerationAbandoned
        for m, msg in res.errors:
            print(f"nes_mpi: rank {self.comm.rank}: generation {g} member {m}: {msg}", file=sys.stderr, flush=True)
        full, owner, rank_seconds = gather_members(self.comm, pack_rows(res), cfg.population, ROW_MEMBER, t_roll)
        fitness, returns, steps = full[:, ROW_FITNESS], full[:, ROW_RETURN], full[:, ROW_STEPS]
        self.last_failed = full[:, ROW_FAILED] > 0
        self.ran_by = [np.flatnonzero(owner == r) for r in range(self.comm.size)]
        if cfg.obs_norm:
            self.obs_norm.update(*pooled_obs(full, self.spec.obs_dim))
        self.sstate, info = self.strategy.tell(self.sstate, g, fitness, self.update_part)
        self.generation = g + 1
        gen_steps = int(steps.sum())
        self.timesteps += gen_steps
        self.episodes += cfg.population * cfg.episodes_per_member
        ok = returns[np.isfinite(returns)]
        return {
            "generation": self.generation, "timesteps": self.timesteps, "episodes": self.episodes,
            "return_mean": float(ok.mean()) if ok.size else math.nan,
            "return_max": float(ok.max()) if ok.size else math.nan,
            "return_min": float(ok.min()) if ok.size else math.nan,
            "failed_members": info.n_failed, "grad_norm": info.grad_norm, "update_norm": info.update_norm,
            "sigma_mean": info.sigma_mean,
            "param_norm": float(np.linalg.norm(self.theta)), "_steps": gen_steps,
            "idle_fraction": idle_fraction(rank_seconds),
            "moved_members": moved_members(owner, self.static_counts),
        }

    # ---- checkpoints ------------------------------------------------------------------------
    def train_state(self, history: bool = True) -> TrainState:
        return TrainState(
            params=self.theta, strategy={k: v for k, v in self.sstate.items() if k != "mean"},
            obs_norm=self.obs_norm.state_dict(),
            generation=self.generation, timesteps=self.timesteps, episodes=self.episodes,
            wall_seconds=self.wall_seconds, eval_return=self.eval_return, best_eval_return=self.best_eval_return,
            config=self.cfg.to_dict(), policy=self.spec.to_dict(), history=self.log.history() if history else {},
            n_ranks=self.comm.size,
        )

    def snapshot(self) -> tuple[TrainState, int]:
        """A copy of the state that later generations cannot change (the last good state on a failure streak),
        and how many history rows belong to it (the log only grows, so the rows are cut when it is saved)."""
        s = self.train_state(history=False)
        s.params = s.params.copy()
        s.strategy = {k: np.copy(v) for k, v in s.strategy.items()}
        s.obs_norm = {k: np.copy(v) for k, v in s.obs_norm.items()}
        return s, len(self.log.rows["generation"])

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Rank 0 writes (the other ranks only note the path); callers run the cross-rank hash check first."""
        self.last_checkpoint = ckpt.checkpoint_path(self.run_dir, self.generation)
        if self.comm.rank != 0:
            return None
        state = self.train_state()
        path = ckpt.save(state, self.last_checkpoint)
        ckpt.prune(self.run_dir, self.cfg.keep_checkpoints)
        return path

    def save_best(self) -> None:
        if self.comm.rank == 0:
            ckpt.save(self.train_state(), ckpt.checkpoint_dir(self.run_dir) / "best.h5")

    def update_best(self, ev: float) -> None:
        """Collective: best.h5 follows the best finite evaluation, the one at generation 0 included."""
        if math.isfinite(ev) and ev > self.best_eval_return:
            self.best_eval_return = ev
            check_identical(self.comm, self.state_bytes(), self.generation)
            self.save_best()

    def stop_on_failures(self, snapshot: tuple[TrainState, int], cause: str) -> None:
        """Collective, on a systematic failure: checkpoint the last good state (unpruned) and raise why."""
        good, rows = snapshot
        good.history = {c: v[:rows] for c, v in self.log.history().items()}
        check_identical(self.comm, self.state_bytes({**good.strategy, "mean": good.params}), good.generation)
        path = ckpt.checkpoint_path(self.run_dir, good.generation)
        msg = (f"{cause}. The last good state (generation {good.generation}) is in {path}; "
               f"fix the environment, then resume from it with --resume {path} --rewind")
        if self.comm.rank == 0:
            ckpt.save(good, path)
            self.record_status("failed", EXIT_ERROR, cause, path)
        self.channel.close()  # collective: no rank leaves before rank 0 has written the checkpoint
        self.last_checkpoint = path
        raise SystematicFailure(msg)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, stop: StopRequest) -> int:
        """Train to cfg.generations or the timesteps budget (0) or until a stop is agreed (EXIT_PREEMPTED);
        rank 0 keeps status.json."""
        cfg, comm = self.cfg, self.comm
        self.channel = StopChannel(comm, stop)
        say(comm, f"nes_mpi: {'resuming ' + str(self.resumed_from) + ' at generation ' + str(self.generation) if self.resumed_from else 'new run'}"
                  f" | env {cfg.env} | {comm.size} rank(s) | {self.dim} parameters | run dir {self.run_dir}")
        say(comm, "nes_mpi: config " + cfg.to_json())
        self.record_status("running", None, "training", self.resumed_from)
        start = time.perf_counter()
        last_saved = self.generation if self.resumed_from else -1
        if self.generation == 0 and not self.log.rows["generation"] and cfg.eval_every:
            t0 = time.perf_counter()
            try:
                ev, ev_std, ev_steps = self.evaluate(0)
            except GenerationAbandoned:
                return self._stop(last_saved, t0)
            self.eval_return = ev
            dt = time.perf_counter() - t0
            row = {"generation": 0, "timesteps": 0, "episodes": 0, "eval_return": ev, "eval_return_std": ev_std,
                   "failed_members": 0, "param_norm": float(np.linalg.norm(self.theta)), "gen_seconds": dt,
                   "steps_per_s": ev_steps / dt, "wall_seconds": self.wall_seconds + dt}
            self.log.append(row)
            say(comm, console_line(row))
            self.update_best(ev)
        failures = FailureWatch(cfg.fail_fraction, cfg.fail_generations)
        good = None
        while not self.finished():
            t0 = time.perf_counter()
            good = self.snapshot() if failures.streak == 0 else good
            evaluating = cfg.eval_every and (self.generation + 1) % cfg.eval_every == 0
            before = self._numerics() if evaluating else None
            try:
                row = self.step()
                g = self.generation
                steps = row.pop("_steps")
                if evaluating:
                    ev, ev_std, ev_steps = self.evaluate(g)
                    steps += ev_steps
                    row["eval_return"], row["eval_return_std"] = ev, ev_std
                    self.eval_return = ev
            except GenerationAbandoned:
                if before is not None:
                    self._restore_numerics(before)
                return self._stop(last_saved, t0)
            cause = failures.observe(g, self.last_failed, self.ran_by)
            if cause:
                self.log.append(row)
                self.stop_on_failures(good, cause)
            if self._inject_divergence == (comm.rank, g):  # fault injection for the tests, see __init__
                entry = self.sstate[self._inject_entry].copy()
                entry[0] += np.float32(0.01)
                self.sstate = {**self.sstate, self._inject_entry: entry}
            done = self.finished()
            writing = g % cfg.checkpoint_every == 0 or done
            if g % cfg.check_every == 0 or writing:  # never write a state the ranks disagree on
                check_identical(comm, self.state_bytes(), g)
            dt = time.perf_counter() - t0
            row.update(gen_seconds=dt, steps_per_s=steps / dt, wall_seconds=self.wall_seconds + dt)
            self.wall_seconds += dt
            self.log.append(row)
            if g % cfg.log_every == 0 or done:
                say(comm, console_line(row))
            self.update_best(row.get("eval_return", math.nan))
            if writing:
                self.save_checkpoint()
                last_saved = g
        path = None
        if last_saved != self.generation:
            check_identical(comm, self.state_bytes(), self.generation)
            path = self.save_checkpoint()
        self.channel.close()
        reason = "reached the last generation" if self.generation >= cfg.generations else "reached the timesteps budget"
        self.record_status("finished", 0, reason, path or ckpt.checkpoint_path(self.run_dir, self.generation))
        say(comm, f"nes_mpi: done: {self.generation} generations, {self.timesteps:,} timesteps, "
                  f"eval return {self.eval_return:.1f} (best {self.best_eval_return:.1f}), "
                  f"{time.perf_counter() - start:.1f} s this session; checkpoints in {ckpt.checkpoint_dir(self.run_dir)}")
        return 0

    def _numerics(self) -> dict:
        """What a generation changes, copied: restored when a stop abandons it after the update."""
        return copy.deepcopy({"strategy": self.sstate,
                              "obs_norm": self.obs_norm.state_dict(), "generation": self.generation,
                              "timesteps": self.timesteps, "episodes": self.episodes, "eval_return": self.eval_return})

    def _restore_numerics(self, saved: dict) -> None:
        self.sstate = saved["strategy"]
        self.obs_norm.load_state_dict(saved["obs_norm"])
        self.generation, self.timesteps, self.episodes = saved["generation"], saved["timesteps"], saved["episodes"]
        self.eval_return = saved["eval_return"]

    def _stop(self, last_saved: int, gen_start: float) -> int:
        """Every rank agreed to stop: checkpoint the state at the start of the abandoned generation.

        No rank leaves before rank 0 has said, in a collective, that the checkpoint is durable (written,
        fsynced, renamed) or that writing it failed: a launcher that kills the job when the first rank
        exits must not cut the write short.
        """
        comm = self.comm
        abandoned = time.perf_counter() - gen_start
        check_identical(comm, self.state_bytes(), self.generation)
        self.channel.close()
        has_state = self.generation > 0 or bool(self.log.rows["generation"])
        outcome = None
        if comm.rank == 0:
            why = f"stop requested by {self.channel.reason()}"
            try:
                time.sleep(self._delay_stop_write)  # fault injection for the tests, see __init__
                path = None
                if has_state and last_saved != self.generation:
                    path = self.save_checkpoint()
                elif has_state:
                    path = ckpt.checkpoint_path(self.run_dir, self.generation)
                self.record_status("stopped", EXIT_PREEMPTED, why, path)
                where = f"checkpoint {path} holds generation {self.generation}" if path else "nothing to checkpoint yet"
                outcome = (EXIT_PREEMPTED, f"nes_mpi: {why}: generation {self.generation + 1} abandoned after "
                                           f"{abandoned:.1f} s; {where}; exiting with code {EXIT_PREEMPTED}",
                           str(path) if path else None)
            except Exception as e:  # the one place a stop can fail: say so, and do not claim a checkpoint
                msg = f"writing the checkpoint after a stop failed: {type(e).__name__}: {e}"
                try:
                    self.record_status("failed", EXIT_ERROR, msg, None)
                except OSError:
                    pass
                outcome = (EXIT_ERROR, msg, None)
        code, msg, path = comm.bcast(outcome, root=0)
        if code != EXIT_PREEMPTED:
            raise StopFailed(msg)
        say(comm, msg)
        if path:
            self.last_checkpoint = Path(path)
        return code

    def record_status(self, state: str, exit_code: int | None, reason: str, checkpoint=None,
                      any_rank: bool = False) -> None:
        """Rank 0 writes RUN_DIR/status.json (see nes_mpi.status); other ranks do nothing, unless `any_rank`:
        a rank that fails alone records its own failure, since rank 0 is stuck in a collective."""
        if self.comm.rank == 0 or any_rank:
            write_status(self.run_dir, state, self.generation, self.cfg.generations, exit_code, reason, checkpoint)

    def close(self):
        self.close_envs()
        if hasattr(self, "work"):
            self.work.free()
        if hasattr(self, "shared_noise"):
            self.shared_noise.free()

    def close_envs(self):
        """The local part of close(): safe on one rank alone (freeing the shared noise is collective)."""
        for h in self.handles:
            try:
                h.outer.close()
            except Exception:
                pass
