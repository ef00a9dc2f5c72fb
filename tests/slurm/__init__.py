"""Tests of slurm/ and of a real single-node SLURM (a package, so that its conftest
does not shadow tests/conftest.py as the module `conftest`)."""
