"""Shared helpers for the benchmark scripts: machine facts and writing results."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import gymnasium
    import mujoco
    import numpy

    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return path
