"""nes_mpi: MPI-parallel Natural Evolution Strategies for gymnasium / MuJoCo control.

The Python API is imported on first use, so `import nes_mpi` stays light (no
mpi4py, torch or gymnasium until a name below is touched):

    nes_mpi.train(config, comm=None, resume=None, **options) -> TrainSummary
    nes_mpi.load_policy(checkpoint, env=None) -> TrainedPolicy: policy(obs) -> action
    nes_mpi.Config, nes_mpi.ConfigError, nes_mpi.CheckpointError, nes_mpi.TrainingError
"""

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "train": "api", "TrainSummary": "api", "TrainingError": "api",
    "Config": "config", "ConfigError": "config",
    "CheckpointError": "checkpoint",
    "load_policy": "trained_policy", "TrainedPolicy": "trained_policy",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nes_mpi' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
