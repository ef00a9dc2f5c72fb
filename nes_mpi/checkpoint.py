"""HDF5 checkpoints: the complete state of a run, written atomically.

Schema (version 3) -- see README "Checkpoint format":
  /            attrs  format, schema_version, env_id, generation, timesteps, episodes, wall_seconds,
                      eval_return, best_eval_return, params_sha256, config (JSON), policy (JSON),
                      versions (JSON), created, hostname, n_ranks, content_sha256
  /params      float32 (num_params,)    the mean of the search distribution
  /strategy    attrs name; one dataset per entry of the strategy's state other than the mean
               (opt_t, opt_m, opt_v: the optimizer; sigma: snes/pgpe per-parameter sigma)
  /obs_norm    count (int64), sum, sumsq (float64, obs_dim)
  /noise       attrs seed, table_size, dtype, chunk, generator
  /history     one 1-D dataset per logged column, one entry per logged generation

`content_sha256` covers every group, dataset and attribute in the file (but itself), walked in
a canonical order, so whatever a later version adds is verified without code changes here.
Files are opened with HDF5 file locking off: Lustre and NFS often lack flock, and the
run-directory lock (run_lock.py) already gives one writer per run.

Older versions are read by `load(..., legacy=True)` (eval, info, status, load_policy; train
with --force): their checksum covers only the parameters.
  version 1: /optimizer (attrs name, t; datasets m, v) instead of /strategy, read as the openai
             strategy, its optimizer state becoming opt_t, opt_m, opt_v
  version 2: the /strategy layout above without content_sha256
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import noise

FORMAT = "nes_mpi-checkpoint"
SCHEMA_VERSION = 3
LEGACY_VERSIONS = (1, 2)  # no content checksum: only their parameters are verified
READABLE_VERSIONS = (*LEGACY_VERSIONS, SCHEMA_VERSION)
CONTENT_SHA = "content_sha256"
CKPT_RE = re.compile(r"^ckpt_(\d+)\.h5$")


class CheckpointError(RuntimeError):
    """An unusable checkpoint file: reported in one line, exit code 2."""


@dataclass
class TrainState:
    params: np.ndarray
    strategy: dict  # the strategy's state without the mean (which is params): name -> array
    obs_norm: dict
    generation: int
    timesteps: int
    episodes: int
    wall_seconds: float
    eval_return: float
    best_eval_return: float
    config: dict
    policy: dict
    history: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    n_ranks: int = 1
    created: str = ""
    hostname: str = ""


def params_sha256(params: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(params, dtype=np.float32).tobytes()).hexdigest()


def content_sha256(f: h5py.File) -> str:
    """A sha256 of every object in an open checkpoint: names, attributes, dtypes, shapes and bytes.

    Objects are visited in sorted path order and attributes in sorted name order; the root's
    `content_sha256` attribute is left out, being the result.
    """
    h = hashlib.sha256()

    def feed(tag: str, value) -> None:
        arr = np.asarray(value)
        if arr.dtype.kind in "OSU":  # strings (h5py gives str or bytes): hash their UTF-8
            data = json.dumps(arr.tolist(), sort_keys=True, default=str).encode()
            kind = "str"
        else:
            data = np.ascontiguousarray(arr).tobytes()
            kind = arr.dtype.str
        h.update(f"{tag}|{kind}|{arr.shape}|{len(data)}|".encode())
        h.update(data)

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            feed(f"dataset:{name}", obj[()])
        else:
            h.update(f"group:{name}|".encode())
        for key in sorted(obj.attrs):
            if name == "/" and key == CONTENT_SHA:
                continue
            feed(f"attr:{name}@{key}", obj.attrs[key])

    names = []
    f.visit(names.append)
    visit("/", f)
    for name in sorted(names):
        visit(name, f[name])
    return h.hexdigest()


def library_versions() -> dict:
    import gymnasium
    import mujoco
    import mpi4py
    from mpi4py import MPI

    from . import __version__

    return {
        "nes_mpi": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "torch": _dist_version("torch"), "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__,
        "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "mpi4py": mpi4py.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
    }


def _dist_version(name: str) -> str:
    """An installed distribution's version without importing it (torch costs ~190 MB per rank)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir, generation: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt_{generation:06d}.h5"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(state: TrainState, path) -> Path:
    """Write to a temporary file beside `path`, fsync, then rename over it: never a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    cfg = state.config
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            a = f.attrs
            a["format"] = FORMAT
            a["schema_version"] = SCHEMA_VERSION
            a["generation"] = int(state.generation)
            a["timesteps"] = int(state.timesteps)
            a["episodes"] = int(state.episodes)
            a["wall_seconds"] = float(state.wall_seconds)
            a["eval_return"] = float(state.eval_return)
            a["best_eval_return"] = float(state.best_eval_return)
            a["params_sha256"] = params_sha256(state.params)
            a["config"] = json.dumps(cfg, sort_keys=True)
            a["policy"] = json.dumps(state.policy, sort_keys=True)
            a["versions"] = json.dumps(state.versions or library_versions(), sort_keys=True)
            a["created"] = state.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            a["hostname"] = state.hostname or socket.gethostname()
            a["n_ranks"] = int(state.n_ranks)
            a["env_id"] = cfg.get("env", "")
            f.create_dataset("params", data=np.asarray(state.params, dtype=np.float32))
            g = f.create_group("strategy")
            g.attrs["name"] = cfg.get("strategy", "")
            for k, v in state.strategy.items():
                g.create_dataset(k, data=np.asarray(v))
            g = f.create_group("obs_norm")
            for k, v in state.obs_norm.items():
                g.create_dataset(k, data=v)
            g = f.create_group("noise")
            g.attrs["seed"] = int(cfg.get("seed", 0))
            g.attrs["table_size"] = int(cfg.get("noise_table_size", 0))
            g.attrs["dtype"] = np.dtype(noise.NOISE_DTYPE).name
            g.attrs["chunk"] = noise.CHUNK
            g.attrs["generator"] = "numpy PCG64 via default_rng([seed, 0x5EED, chunk]); offsets default_rng([seed, 0x0FF5E7, generation])"
            g = f.create_group("history")
            for k, v in state.history.items():
                g.create_dataset(k, data=np.asarray(v))
            f.attrs[CONTENT_SHA] = content_sha256(f)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path, verify: bool = True, legacy: bool = False) -> TrainState:
    """Read a checkpoint; any problem becomes a CheckpointError with a one-line reason.

    `legacy` also reads schema versions 1 and 2, whose checksum covers only the parameters.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (use --resume auto with --run-dir)")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise CheckpointError(f"{path} is not a readable HDF5 file ({_short(e)})") from None
    try:
        with f:
            a = f.attrs
            if a.get("format") != FORMAT:
                raise CheckpointError(f"{path} is an HDF5 file but not an nes_mpi checkpoint")
            version = int(a.get("schema_version", -1))
            if version not in READABLE_VERSIONS:
                raise CheckpointError(f"{path} has checkpoint schema version {version}; this nes_mpi reads versions "
                                      f"{', '.join(map(str, READABLE_VERSIONS))}")
            if version in LEGACY_VERSIONS and not legacy:
                raise CheckpointError(f"{path} has checkpoint schema version {version}, whose checksum covers only the "
                                      "parameters; eval, info and status read it, and train resumes it with --force")
            if verify and (version == SCHEMA_VERSION or CONTENT_SHA in a) and content_sha256(f) != str(a.get(CONTENT_SHA, "")):
                raise CheckpointError(f"{path} failed its checksum: the stored contents are corrupted")
            params = f["params"][()]
            state = TrainState(
                params=params,
                strategy=_strategy_state(f, version),
                obs_norm={k: f["obs_norm"][k][()] for k in f["obs_norm"]},
                generation=int(a["generation"]), timesteps=int(a["timesteps"]), episodes=int(a["episodes"]),
                wall_seconds=float(a["wall_seconds"]), eval_return=float(a["eval_return"]),
                best_eval_return=float(a["best_eval_return"]),
                config=json.loads(a["config"]), policy=json.loads(a["policy"]),
                history={k: f["history"][k][()] for k in f["history"]},
                versions=json.loads(a["versions"]), n_ranks=int(a["n_ranks"]),
                created=str(a["created"]), hostname=str(a["hostname"]),
            )
            stored_sha = str(a["params_sha256"])
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} is damaged or incomplete ({_short(e)})") from None
    if verify and params_sha256(state.params) != stored_sha:
        raise CheckpointError(f"{path} failed its checksum: the stored parameters are corrupted")
    return state


def _strategy_state(f: h5py.File, version: int) -> dict:
    if "strategy" not in f and "optimizer" in f:  # version 1: the openai strategy's optimizer, t an attribute
        g = f["optimizer"]
        return {"opt_t": np.int64(g.attrs["t"]), **{f"opt_{k}": g[k][()] for k in g}}
    return {k: f["strategy"][k][()] for k in f["strategy"]}


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(generation, path) of the numbered checkpoints in a run directory, newest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def newest_good(run_dir, legacy: bool = False) -> tuple[Path | None, TrainState | None, list[str]]:
    """The newest checkpoint that loads and passes its checksums, its state, and why newer ones were skipped."""
    skipped = []
    for _, p in list_checkpoints(run_dir):
        try:
            return p, load(p, legacy=legacy), skipped
        except CheckpointError as e:
            skipped.append(str(e))
    return None, None, skipped


def latest_good(run_dir, legacy: bool = False) -> tuple[Path | None, list[str]]:
    path, _, skipped = newest_good(run_dir, legacy)
    return path, skipped


def prune(run_dir, keep: int) -> None:
    for _, p in list_checkpoints(run_dir)[keep:]:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
