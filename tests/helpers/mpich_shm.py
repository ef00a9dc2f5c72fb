"""The name MPICH gives a node's shared-memory segment, to check that the SLURM scripts clean it."""
from __future__ import annotations

from pathlib import Path


def fnv1a(text: str) -> str:
    """32-bit FNV-1a in lower-case hex: MPICH's hash of the PMI job name."""
    h = 2166136261
    for b in text.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return f"{h:x}"


def segment(pmi_job: str, node: int = 0) -> Path:
    """/dev/shm/mpich_shm_<hash>_<node>; under `srun --mpi=pmi2` pmi_job is "<job id>.<step id>"."""
    return Path("/dev/shm") / f"mpich_shm_{fnv1a(pmi_job)}_{node}"
