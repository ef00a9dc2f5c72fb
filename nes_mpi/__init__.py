"""nes_mpi: MPI-parallel Natural Evolution Strategies for gymnasium / MuJoCo control."""

__version__ = "0.1.0"
