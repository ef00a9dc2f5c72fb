"""Shared helpers for the benchmark scripts: machine facts and writing results."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # the trainer runs one thread per rank

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


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
