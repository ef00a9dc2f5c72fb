"""Shared helpers for the benchmark scripts: machine facts, writing results, timing, and the
trainer's processes under mpiexec (their ranks, CPU seconds and memory)."""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # the trainer runs one thread per rank

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
PYTHON = sys.executable


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(mod: str) -> str | None:
    try:
        return getattr(__import__(mod), "__version__", None)
    except Exception:
        return None


def _meminfo_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """What the figures were measured on: CPU, load, versions, commit, date."""
    mpi = None
    try:
        out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=20).stdout
        vers = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith("Version:")]
        mpi = f"MPICH hydra {vers[0]}" if vers else (out.splitlines()[0] if out else None)
    except Exception:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except Exception:
        commit = None
    return {
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_mb": _meminfo_mb("MemTotal"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mujoco": _version("mujoco"),
        "gymnasium": _version("gymnasium"),
        "mpi4py": _version("mpi4py"),
        "mpi": mpi,
        "platform": platform.platform(),
        "git_commit": commit,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(name: str, data: dict) -> Path:
    """benchmarks/results/<name>.json, with the machine (taken now unless the caller took it at the start)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = data.setdefault("machine", None) or machine_info()
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    data["machine"] = machine
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    print(f"wrote {path}")
    return path


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def median(xs) -> float:
    return float(statistics.median(xs))


def no_mpi_init() -> None:
    """The driver imports nes_mpi modules that import mpi4py.MPI but needs no MPI itself: stay out of
    MPI (no singleton init) so that the mpiexec runs it starts are independent of it."""
    import mpi4py

    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False


# ---- processes started by mpiexec ---------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ppid_map() -> dict[int, int]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                out[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rank_pids(root: int) -> dict[int, int]:
    """{MPI rank: pid} of the processes under `root` (our mpiexec) whose environment has PMI_RANK."""
    found = {}
    for pid in descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"PMI_RANK="):
                found[int(item[9:])] = pid
    return found


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = stat[stat.rindex(")") + 2 :].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def log_rows(run_dir: Path) -> int:
    try:
        with open(run_dir / "log.csv", "rb") as fh:
            return max(0, fh.read().count(b"\n") - 1)
    except OSError:
        return 0


def read_log(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def run_trainer(n_ranks: int, args: list[str], run_dir: Path, poll: float = 0.2, sampler=None,
                timeout: float = 900) -> dict:
    """Run `mpiexec -n P python -m nes_mpi ... --run-dir run_dir`, polling its ranks while it runs.

    Returns the log rows, the command, and `cpu_share`: the ranks' CPU seconds / (P x wall seconds)
    between the end of generation 1 and the end of the last one (how much of a core each rank got).
    `sampler(pids, mpiexec_pid)`, if given, is called at every poll; its results are returned in `samples`.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [MPIEXEC, "-n", str(n_ranks), PYTHON, "-m", "nes_mpi", *args, "--run-dir", str(run_dir)]
    out_path = run_dir.parent / f"{run_dir.name}.out"
    polls, samples = [], []
    pids: dict[int, int] = {}
    t0 = time.perf_counter()
    with open(out_path, "w") as out:
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while p.poll() is None:
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"{' '.join(cmd)} took more than {timeout} s")
                if len(pids) < n_ranks:
                    pids = rank_pids(p.pid)
                now = time.perf_counter()
                cpus = [cpu_seconds(pid) for pid in pids.values()]
                if len(pids) == n_ranks and all(c is not None for c in cpus):
                    polls.append((now, log_rows(run_dir), sum(cpus)))
                if sampler is not None and pids:
                    samples.append(sampler(pids, p.pid))
                time.sleep(poll)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.perf_counter() - t0
    text = out_path.read_text()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{text[-3000:]}")
    rows = read_log(run_dir)
    n = len(rows)
    share = None
    first = next((x for x in polls if x[1] >= 1), None)
    last = next((x for x in polls if x[1] >= n), None) or (polls[-1] if polls else None)
    if first and last and last[0] - first[0] > 0.5:
        share = (last[2] - first[2]) / (n_ranks * (last[0] - first[0]))
    return {"cmd": cmd, "rows": rows, "process_seconds": wall, "cpu_share": share, "samples": samples,
            "polls": polls, "output_tail": text[-1500:]}


# ---- timing ----------------------------------------------------------------------------------------
def clock():
    return time.perf_counter(), time.process_time()


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    """Median wall and CPU seconds of fn()."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = clock()
        fn()
        w2, c2 = clock()
        wall.append(w2 - w)
        cpu.append(c2 - c)
    return {"wall": median(wall), "cpu": median(cpu)}


# ---- memory of a live process ----------------------------------------------------------------------
ROLLUP_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Shared_Clean", "Shared_Dirty",
               "Private_Clean", "Private_Dirty")


def rollup(pid: int) -> dict | None:
    """Bytes from /proc/<pid>/smaps_rollup; uss = private clean + private dirty."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ROLLUP_KEYS:
            out[key] = int(rest.split()[0]) * 1024
    if "Rss" not in out:
        return None
    out["Uss"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


# ==== the design point: Humanoid 256-256, population 1,024, 64 ranks (design_point.py, cost_model.py) =====
ENV = "Humanoid-v5"
HIDDEN = (256, 256)
POPULATION = 1024
RANKS = 64
MEMBERS = POPULATION // RANKS
TABLE = 1 << 25
EPISODE_STEPS = 1000
CHECK_EVERY = 5          # Config.check_every default
CHECKPOINT_EVERY = 10    # Config.checkpoint_every default
EVAL_EVERY = 10          # Config.eval_every default
HISTORY_ROWS = 1000      # checkpoint history length assumed (a 1,000-generation run)
CLOCKS = ("cpu", "wall")

# Networks for collectives beyond one node (alpha: per-message latency, beta: seconds per byte).
NETWORKS = {
    "ib": {"alpha": 2e-6, "beta": 1 / 10e9, "what": "InfiniBand HDR100 class: 2 us, 10 GB/s"},
    "10gbe": {"alpha": 25e-6, "beta": 1 / 1.1e9, "what": "10 Gb Ethernet: 25 us, 1.1 GB/s (the verdict uses this, the worst)"},
}



class Bench:
    """What one rank holds, built with the trainer's own classes."""

    def __init__(self, env: str = ENV, hidden=HIDDEN, members: int = MEMBERS, population: int = POPULATION,
                 table_size: int = TABLE, with_default_envs: bool = True):
        from nes_mpi.envs import make_env
        from nes_mpi.noise import NoiseTable, make_table
        from nes_mpi.obs_norm import ObsNorm
        from nes_mpi.optimizers import Adam
        from nes_mpi.policy import BatchPolicy, initial_params, spec_for
        from nes_mpi.strategies import OpenAIES, Sampling

        self.members = members
        self.population = population
        # Environments that run their whole episode (Humanoid: never terminate early) and, for Humanoid, the
        # default ones that terminate when the body falls.
        kw = {"terminate_when_unhealthy": False} if env.startswith("Humanoid") else {}
        self.handles_full = [make_env(env, kw, 0) for _ in range(members)]
        self.handles_default = [make_env(env, {}, 0) for _ in range(members)] if with_default_envs else []
        first = self.handles_full[0]
        self.max_steps = first.max_steps
        self.spec = spec_for(first.outer, "mlp", tuple(hidden), "tanh")
        self.dim = self.spec.num_params
        self.obs_dim = self.spec.obs_dim
        w, c = clock()
        self.table = make_table(table_size, 0)
        self.table_fill = {"wall": clock()[0] - w, "cpu": clock()[1] - c}
        self.noise = NoiseTable(self.table, 0)
        self.theta = initial_params(self.spec, 0)
        self.make_nes = lambda pop: OpenAIES(Sampling(self.noise, self.dim, pop), 0.02, Adam(0.01), weight_decay=0.005)
        self.nes = self.make_nes(population)
        self.sstate = self.nes.init(self.theta)
        self.policy = BatchPolicy(self.spec)
        self.obs_norm = ObsNorm(self.obs_dim, 5.0, True)
        self.norms: dict[int, ObsNorm] = {}  # running statistics per set of environments, as a trainer keeps them
        self._obs_norm_cls = ObsNorm
        self.generation = 1
        self.rng = np.random.default_rng(1)

    def close(self):
        for h in self.handles_full + self.handles_default:
            try:
                h.outer.close()
            except Exception:
                pass

    # ---- rollouts ----
    def rollout(self, handles, episodes_per_member: int, members: int | None = None) -> dict:
        """One real `rollout()` call as Trainer.step makes it; returns wall/cpu seconds, member-steps, episodes."""
        from nes_mpi.rollout import episode_seed, obs_count, rollout

        n = members or self.members
        g = self.generation
        self.generation += 1
        params = self.nes.ask(self.sstate, g, range(n))
        seeds = [[episode_seed(0, g, m, e) for e in range(episodes_per_member)] for m in range(n)]
        # Observations are normalised with the statistics of the earlier rollouts on the same environments,
        # as in a running trainer (the physics' cost depends on the actions, hence on the normalisation).
        norm = self.norms.setdefault(id(handles), self._obs_norm_cls(self.obs_dim, 5.0, True))
        mean, std = norm.mean_std()
        w, c = clock()
        res = rollout([h.env for h in handles[:n]], self.max_steps, self.policy, params, seeds, mean, std, 5.0, 0.0,
                      collect_obs=True)
        w2, c2 = clock()
        norm.update(int(obs_count(res).sum()), res.obs_sum.sum(axis=0), res.obs_sumsq.sum(axis=0))
        return {"wall": w2 - w, "cpu": c2 - c, "steps": int(res.steps.sum()), "episodes": n * episodes_per_member}

    def reset_cost(self, n: int = 40) -> dict:
        env = (self.handles_default or self.handles_full)[0].env
        return timed(lambda: env.reset(seed=int(self.rng.integers(1 << 30))), n, warmup=3)

    def policy_forward(self, batch: int, calls: int) -> dict:
        from nes_mpi.policy import BatchPolicy

        pol = BatchPolicy(self.spec)
        pol.load(np.repeat(self.theta[None, :], batch, axis=0))
        x = self.rng.standard_normal((batch, self.obs_dim)).astype(np.float32)
        return timed(lambda: pol(x.copy()), calls, warmup=2)

    # ---- the rest of a generation ----
    def ask(self, members: int | None = None) -> dict:
        from nes_mpi.rollout import episode_seed

        n = members or self.members

        def go():
            g = self.generation
            self.nes.ask(self.sstate, g, range(n))
            [[episode_seed(0, g, m, 0)] for m in range(n)]
            self.obs_norm.mean_std()
        return timed(go, 7)

    def tell(self, population: int | None = None, repeats: int = 5) -> dict:
        """OpenAIES.tell (+ the trainer's param_norm), and separately its weighted sum and the Adam step."""
        pop = population or self.population
        nes = self.nes if pop == self.population else self.make_nes(pop)
        state = nes.init(self.theta)
        theta = state["mean"]
        opt_state = nes.optimizer.init(self.dim)
        keys = ("tell", "weighted_sum", "adam")
        acc = {k: {"wall": [], "cpu": []} for k in keys}
        for r in range(repeats + 1):
            g = 1000 + r
            fitness = self.rng.standard_normal(pop)
            w = self.rng.standard_normal(pop // 2)
            offsets = nes.sampling.directions(g + 50)
            grad = self.rng.standard_normal(self.dim)
            ops = {
                "tell": lambda: np.linalg.norm(nes.tell(state, g, fitness)[0]["mean"]),
                "weighted_sum": lambda: self.noise.weighted_sum(w, offsets, self.dim),
                "adam": lambda: nes.optimizer.step(opt_state, theta, grad),
            }
            for k in keys:
                t0 = clock()
                ops[k]()
                t1 = clock()
                if r:  # the first round is a warm-up
                    acc[k]["wall"].append(t1[0] - t0[0])
                    acc[k]["cpu"].append(t1[1] - t0[1])
        return {k: {c: median(v[c]) for c in CLOCKS} for k, v in acc.items()}

    def obs_norm_update(self, population: int | None = None) -> dict:
        """Trainer.step around the gather (minus the gather), with the trainer's own functions: pack my rows
        (`pack_rows`), pool everyone's observation sums (`pooled_obs`, `ObsNorm.update`), the row statistics."""
        from nes_mpi.obs_norm import ObsNorm
        from nes_mpi.rollout import RolloutResult
        from nes_mpi.trainer import ROW_RETURN, ROW_STEPS, idle_fraction, pack_rows, pooled_obs, row_doubles

        pop = population or self.population
        od, m, rng = self.obs_dim, self.members, self.rng
        full = np.abs(rng.standard_normal((pop, row_doubles(od))))
        res = RolloutResult(returns=rng.standard_normal(m), fitness=rng.standard_normal(m),
                            steps=rng.integers(1, 1000, m), obs_sum=rng.standard_normal((m, od)),
                            obs_sumsq=rng.standard_normal((m, od)), failed=np.zeros(m, dtype=bool), errors=[],
                            members=np.arange(m))
        rank_seconds = rng.random(RANKS)
        norm = ObsNorm(od, 5.0, True)

        def go():
            pack_rows(res)
            returns, steps = full[:, ROW_RETURN], full[:, ROW_STEPS]
            norm.update(*pooled_obs(full, od))
            ok = returns[np.isfinite(returns)]
            float(ok.mean()), float(ok.max()), float(ok.min()), int(steps.sum())
            idle_fraction(rank_seconds)
        return timed(go, 15)

    def sha256(self) -> dict:
        from nes_mpi.comm import params_digest

        return timed(lambda: params_digest(self.theta), 15)

    def checkpoint(self, workdir: Path, env: str, repeats: int = 3) -> dict:
        """checkpoint.save + prune as Trainer.save_checkpoint does (wall clock: it fsyncs), and one CSV row."""
        from nes_mpi import checkpoint as ckpt
        from nes_mpi.checkpoint import TrainState
        from nes_mpi.config import Config
        from nes_mpi.runlog import COLUMNS, INT_COLUMNS, RunLog

        cfg = Config(env=env, hidden_sizes=HIDDEN, population=self.population, run_dir=str(workdir))
        history = {c: (np.arange(HISTORY_ROWS, dtype=np.int64) if c in INT_COLUMNS
                       else self.rng.standard_normal(HISTORY_ROWS)) for c in COLUMNS}
        state = TrainState(params=self.theta, strategy={k: v for k, v in self.sstate.items() if k != "mean"},
                           obs_norm=self.obs_norm.state_dict(), generation=0, timesteps=0, episodes=0,
                           wall_seconds=0.0, eval_return=0.0, best_eval_return=0.0, config=cfg.to_dict(),
                           policy=self.spec.to_dict(), history=history, n_ranks=RANKS)
        times, sizes = [], []
        for r in range(repeats + 1):
            state.generation = (r + 1) * CHECKPOINT_EVERY
            t = time.perf_counter()
            path = ckpt.save(state, ckpt.checkpoint_path(workdir, state.generation))
            ckpt.prune(workdir, cfg.keep_checkpoints)
            dt = time.perf_counter() - t
            sizes.append(path.stat().st_size)
            if r:
                times.append(dt)
        log = RunLog(workdir, None, active=True)
        row = {c: 1.0 for c in COLUMNS}
        return {"save": median(times), "bytes": int(median(sizes)), "log_append": timed(lambda: log.append(row), 15)["wall"]}


# ==== the Allgatherv, measured with 2 ranks ============================================================
ALLGATHER_SIZES = [2, 8, 32, 128, 512, 1024, 2048]


def allgather_worker(k: int, reps: int) -> None:
    """Runs under mpiexec: time gather_members (the trainer's Allgatherv of member rows), check_identical
    and any_rank. The key stays "gather_rows" for the readers of design_point.json."""
    from mpi4py import MPI

    from nes_mpi.comm import any_rank, check_identical, gather_members, member_range
    from nes_mpi.trainer import ROW_MEMBER

    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.rank)

    def bench(fn, n, budget=3.0):
        """At least n repetitions, more (up to 20 n) while within `budget` seconds: on a loaded machine the
        two ranks are seldom running at the same moment, and the fastest repetitions are the ones where they were."""
        for _ in range(3):
            fn()
        ts = []
        start = time.perf_counter()
        while True:
            comm.Barrier()
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
            more = len(ts) < n or (len(ts) < 20 * n and time.perf_counter() - start < budget)
            if not comm.allreduce(more, op=MPI.LAND):  # every rank stops at the same repetition
                break
        ts = np.array(ts)
        worst = np.empty_like(ts)
        comm.Allreduce(ts, worst, op=MPI.MAX)  # a collective lasts as long as its slowest rank
        return worst

    out = {"ranks": comm.size, "row_doubles": k, "gather_rows": {}}
    for n_total in ALLGATHER_SIZES:
        mine = member_range(n_total, comm.size, comm.rank)
        local = rng.standard_normal((len(mine), k))
        local[:, ROW_MEMBER] = mine
        ts = bench(lambda: gather_members(comm, local, n_total, ROW_MEMBER, 1.0), reps)
        out["gather_rows"][n_total] = {"bytes_total": n_total * k * 8, "median_s": float(np.median(ts)),
                                       "min_s": float(ts.min()), "p10_s": float(np.percentile(ts, 10)),
                                       "reps": int(ts.size)}
    theta = np.zeros(160_000, dtype=np.float32)
    for name, fn in (("check_identical", lambda: check_identical(comm, theta, 0)),
                     ("any_rank", lambda: any_rank(comm, False)), ("barrier", comm.Barrier)):
        ts = bench(fn, reps, budget=1.0)
        out[name] = {"median_s": float(np.median(ts)), "min_s": float(ts.min()), "reps": int(ts.size)}
    if comm.rank == 0:
        print("ALLGATHER_JSON " + json.dumps(out), flush=True)


def measure_allgather(k: int, reps: int = 40) -> dict:
    cmd = [MPIEXEC, "-n", "2", PYTHON, str(Path(__file__).resolve()), "allgather-worker", str(k), str(reps)]
    p = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    for line in p.stdout.splitlines():
        if line.startswith("ALLGATHER_JSON "):
            res = json.loads(line.split(" ", 1)[1])
            res["gather_rows"] = {int(n): v for n, v in res["gather_rows"].items()}
            res["cmd"] = " ".join(cmd)
            return res
    raise RuntimeError(f"allgather worker failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def fit_alpha_beta(ag: dict) -> tuple[float, float]:
    """Least squares of the 2-rank model T = alpha + (N/2) beta over the measured sizes.

    Fitted to the fastest of the repetitions (on this shared 2-core machine the median mostly measures a rank
    being descheduled in the middle of the collective; the JSON keeps the medians too), weighting relative
    errors so that the small sizes fix alpha and the large ones beta."""
    xs = np.array([v["bytes_total"] / 2 for v in ag["gather_rows"].values()])
    ys = np.array([v["min_s"] for v in ag["gather_rows"].values()])
    beta, alpha = np.polyfit(xs, ys, 1, w=1 / ys)
    return max(float(alpha), 1e-7), max(float(beta), 1e-12)


def allgather_model(nbytes: float, p: int, alpha: float, beta: float) -> float:
    """Ring Allgatherv: P-1 steps of one N/P-byte message each (an upper bound: MPICH may take fewer steps)."""
    return 0.0 if p <= 1 else (p - 1) * alpha + (p - 1) / p * nbytes * beta


def allreduce_model(p: int, alpha: float) -> float:
    return 0.0 if p <= 1 else 2 * math.ceil(math.log2(p)) * alpha


# ==== the cost model ===================================================================================
def policy_cost(batch: int, pol: dict) -> float:
    pol = {int(k): v for k, v in pol.items()}
    if batch in pol:
        return pol[batch]
    keys = sorted(pol)
    if batch > keys[-1]:  # past the measured range the forward is memory bound: linear in the batch
        return pol[keys[-1]] * batch / keys[-1]
    lo = max(k for k in keys if k < batch)
    hi = min(k for k in keys if k > batch)
    return pol[lo] + (pol[hi] - pol[lo]) * (batch - lo) / (hi - lo)


def rollout_model(batch: int, per_member_step: float, pol: dict, reset: float, steps: int = EPISODE_STEPS) -> float:
    """Lockstep rollout of `batch` members, `steps` steps: env work per member-step + one batched forward per step."""
    return steps * (batch * per_member_step + policy_cost(batch, pol)) + batch * reset


if __name__ == "__main__":  # `common.py allgather-worker ROW_DOUBLES REPS`, under mpiexec (measure_allgather)
    if sys.argv[1:2] == ["allgather-worker"]:
        allgather_worker(int(sys.argv[2]), int(sys.argv[3]))
