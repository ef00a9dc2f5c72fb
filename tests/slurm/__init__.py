"""Tests of slurm/ and of a real SLURM on this machine (a package, so that its conftest
does not shadow tests/conftest.py as the module `conftest`)."""
