# Two commands for a fresh machine:  `make run`  and  `make test`.
# Everything goes into .venv inside the checkout.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch is all nes_mpi needs. Override on a machine whose
# package index serves CPU wheels differently, e.g.
#   make install TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cpu'
TORCH_SPEC ?= torch==2.13.0
# `make install EXTRAS=tools,export,tensorboard,test` on a cluster whose MPI you link mpi4py against.
EXTRAS ?= mpich,tools,export,tensorboard,test
NP ?= $(shell nproc 2>/dev/null || echo 2)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow and not slurm"
# `make run` continues an interrupted run (Ctrl-C writes a checkpoint) instead of refusing it.
RUN_ARGS ?= --resume auto

.PHONY: install run test test-all test-slurm bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: install
	$(VENV)/bin/mpiexec -n $(NP) $(PY) -m nes_mpi $(RUN_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -m "not slurm"

test-slurm: install
	$(PY) -m pytest -m slurm

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
