"""Run every speed/memory benchmark in one go (a few minutes on 2 cores); learning runs are separate.

    python benchmarks/run_all.py          # or: make bench
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["throughput.py", "node_split.py", "design_point.py", "scaling.py", "memory.py", "checkpoint_io.py",
           "bandwidth.py", "cost_model.py", "many_ranks.py", "idle.py", "group_size.py", "schedule.py"]


def main() -> int:
    failed = []
    for script in SCRIPTS:
        print(f"\n=== {script} ===", flush=True)
        if subprocess.call([sys.executable, str(HERE / script)]) != 0:
            failed.append(script)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
