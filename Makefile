# Reverie: two commands set up and run everything on a fresh machine.
#   make run   - a real training run on the default task (progress bar, results folder)
#   make test  - the test suite and the linter
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned: a CPU wheel is provided on these machines; an unpinned
	# torch would pull gigabytes of CUDA packages.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test,gp,dmc,mujoco]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/reverie train pets --env Pendulum-v1 episodes=10 eval_episodes=3

test: $(STAMP)
	$(VENV)/bin/ruff check reverie tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check reverie tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_imagination.py
	$(PY) benchmarks/bench_planner.py
	$(PY) benchmarks/bench_pilco.py
	$(PY) benchmarks/bench_dreamer.py

clean:
	rm -rf $(VENV) runs .pytest_cache
