# meshpilot — every target installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed-dev

.PHONY: install install-serve system-deps run test test-unit lint type format bench clean

$(SERVE_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $(SERVE_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP) $(SERVE_STAMP)

install-serve: $(SERVE_STAMP)  ## what serving needs: no torch, no stable-baselines3, no test tools

install: $(STAMP)  ## everything: training (torch pinned to the 2.13.0 CPU build) and the test tools

system-deps:  ## Prometheus, promtool, kubectl, docker.io, debootstrap from Debian; kube-apiserver+etcd built from source (cached)
	bash .ci/system-deps.sh

run: install-serve  ## the main job: controller + API against the embedded simulated mesh
	$(VENV)/bin/meshpilot serve --mesh sim

test: install system-deps  ## the whole test suite, with a real Prometheus and a real kube-apiserver
	$(PY) -m pytest

test-unit: install  ## fast unit tests only
	$(PY) -m pytest tests/unit

lint: install  ## ruff (lint + format check), mypy, import-linter layer contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

type: install
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install system-deps  ## measured performance numbers (printed, never asserted)
	$(PY) bench/simulator_throughput.py
	$(PY) bench/write_rate.py
	$(PY) bench/tick_latency.py
	$(PY) bench/decide_latency.py
	$(PY) bench/reaction_bound.py --seeds 10
	$(PY) bench/policy_suite.py --seeds 10
	$(PY) bench/policy_suite.py --seeds 20 --first-seed 100 --out runs/bench/policy_suite_held_out.json
	$(PY) bench/least_request_fit.py
	$(PY) bench/lab_loadgen.py
	$(PY) bench/lab_reaction.py --trials 5
	$(PY) bench/fidelity.py
	$(PY) bench/lab_advantage.py --out runs/bench/lab_advantage.json
	$(PY) bench/generalization.py --range test --count 200 --seeds 2 --suite-seeds 10 --workers 2 --as-served --policies ppo,planner,oracle,oracle-late,oracle-hindsight,equal,proportional,sqrt,greedy,canary,ewma --out runs/bench/generalization_test200x2_served.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache runs
