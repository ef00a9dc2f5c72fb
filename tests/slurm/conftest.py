"""A real two-node SLURM on this machine for the tests marked `slurm` (tests/slurm/cluster.sh).

The `slurm_cluster` fixture starts munged, slurmctld and slurmd once per session
(installing the Debian packages first if they are missing), points SLURM_CONF at
that cluster for this process and its children, and stops the daemons at the end
unless they were already running before the session (then they are left alone).

Without root, or when the packages cannot be installed, the tests are skipped;
with CI set (as in .ci/run) that is a failure instead, so CI never passes
without having run them. NES_SLURM_KEEP=1 leaves the cluster running afterwards.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CLUSTER_SH = HERE / "cluster.sh"
SLURM_DIR = Path(os.environ.get("NES_SLURM_DIR", "/tmp/nes_mpi_slurm"))


@dataclass
class Cluster:
    dir: Path
    conf: Path


def _skip_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"SLURM tests must run in CI, but: {reason}", pytrace=False)
    pytest.skip(reason)


def _cluster(cmd: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, NES_SLURM_DIR=str(SLURM_DIR))
    return subprocess.run(["bash", str(CLUSTER_SH), cmd], env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        _skip_or_fail("the test SLURM cluster needs root (it runs slurmctld/slurmd as root)")
    status = _cluster("status", timeout=60)
    already_up = "slurmctld: running" in status.stdout
    # apt-get may have to fetch ~40 packages on a fresh machine
    start = _cluster("start", timeout=900)
    if start.returncode == 3:
        _skip_or_fail(f"cannot get SLURM on this machine:\n{start.stdout}")
    if start.returncode != 0:
        pytest.fail(f"tests/slurm/cluster.sh start failed ({start.returncode}):\n{start.stdout}",
                    pytrace=False)
    conf = SLURM_DIR / "etc" / "slurm.conf"
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield Cluster(dir=SLURM_DIR, conf=conf)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if not already_up and not os.environ.get("NES_SLURM_KEEP"):
            stop = _cluster("stop", timeout=120)
            if stop.returncode != 0:
                print(f"tests/slurm/cluster.sh stop failed:\n{stop.stdout}")
