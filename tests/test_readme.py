"""The README's "Use a trained policy" and "Python API" snippets, extracted from README.md and run as they are."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import MPIEXEC, ROOT, child_env, info, nes

pytestmark = pytest.mark.mpi


def snippet(name: str) -> str:
    """The fenced block that follows `<!-- test: NAME -->` in README.md."""
    found = re.findall(rf"<!-- test: {re.escape(name)} -->\n```\w*\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(found) == 1, f"README.md has {len(found)} snippets marked {name!r}"
    return found[0]


def run_python(code: str, cwd, ranks: int | None = None) -> subprocess.CompletedProcess:
    script = cwd / "snippet.py"
    script.write_text(code)
    cmd = [sys.executable, str(script)]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=child_env(), timeout=600)
    assert proc.returncode == 0, f"{code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_use_a_trained_policy(tmp_path):
    """Train briefly into runs/cheetah as the README assumes, then load, run, export and run the exports."""
    nes("--env", "HalfCheetah-v5", "--generations", "2", "--population", "8", "--max-episode-steps", "50",
        "--eval-every", "1", "--eval-episodes", "1", "--noise-table-size", str(1 << 20), "--run-dir", "runs/cheetah",
        ranks=None, check=True, cwd=tmp_path)
    out = run_python(snippet("use-policy"), tmp_path).stdout
    assert re.search(r"^return -?\d+\.\d$", out, re.M), out

    commands = [line.split("#")[0].split() for line in snippet("export").splitlines() if line.strip()]
    assert len(commands) == 2
    for cmd in commands:
        assert cmd[:3] == ["python", "-m", "nes_mpi"]
        nes(*cmd[3:], ranks=None, check=True, cwd=tmp_path)
    out = run_python(snippet("run-exported"), tmp_path).stdout
    shape, diff = re.match(r"\(1, 6\) (\S+)", out).group(0, 1)
    assert float(diff) < 1e-5, out


def test_python_api_script_under_mpiexec(tmp_path, mpiexec):
    code = snippet("python-api")
    assert "mpiexec -n 2 python my_script.py" in code
    out = run_python(code, tmp_path, ranks=2).stdout
    m = re.search(r"generation (\d+), (\d+) timesteps, best eval return (\S+), checkpoint (\S+)", out)
    assert m, out
    d = info(tmp_path / m.group(4))
    assert int(m.group(1)) == d["generation"] == 10 and int(m.group(2)) == d["timesteps"]
    # run again: resume="auto" finds the finished run and returns at once with the same summary
    again = run_python(code, tmp_path, ranks=2).stdout
    assert m.group(0) in again
