"""Shared helpers for the benchmark scripts: machine facts, writing results, timing, and the
trainer's processes under mpiexec (their ranks, CPU seconds and memory)."""
from __future__ import annotations

import csv
import datetime as _dt
import json
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
