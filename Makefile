# inferq: the two commands are `make demo` and `make test`; `make install` sets up .venv only.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
#: The CPU build of torch this project is tested with; installed before the project so that pip never pulls
#: another (multi-GB CUDA) build to satisfy the project's torch range.
TORCH_VERSION ?= 2.13.0
#: A folder of local wheels (holds the torch CPU wheel on the project's machines), used when it exists.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS))

.PHONY: install demo test lint format docs bench bench-fair-share bench-million bench-polling soak clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(FIND_LINKS) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q $(FIND_LINKS) -e ".[worker,server,dev,docs]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/inferq demo

#: Two pytest processes, a test file each at a time (its module fixtures built once): most of a test's time is spent
#: waiting on worker processes, leases and services, not computing; each process has a database of its own and each
#: test its own queue (or Redis). `make test PYTEST_ARGS=` runs the suite in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check inferq producer worker server inferq_demo migrations tests bench soak
	$(BIN)/ruff format --check inferq producer worker server inferq_demo migrations tests bench soak
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix inferq producer worker server inferq_demo migrations tests bench soak
	$(BIN)/ruff format inferq producer worker server inferq_demo migrations tests bench soak

#: The documentation site (mkdocs.yml) into site/; --strict: a broken link or a reference to a missing name fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

#: `make bench` also runs the fair-share benchmark (bench/fair_share.py, ~1 minute): a small job's wait behind a big
#: one with the dispatcher and first in, first out, and the cancel of a queued million-item job; its JSON is kept.
bench: install
	$(BIN)/python -m bench
	$(MAKE) bench-fair-share

bench-fair-share: install
	$(BIN)/python -m bench.fair_share | tee bench/results/$$(date +%Y%m%d-%H%M%S)-fair-share.json

#: A million items end to end on the null device: submit, run, Parquet and NPY export, each step's wall time and every
#: process's peak memory (bench/million.py; ~15 minutes on 2 cores, so not part of `make bench`).
bench-million: install
	$(BIN)/python -m bench --tasks million

#: Status polls under wrk (Debian's `wrk` package): requests/s and latency percentiles, 1 and 2 server processes.
bench-polling: install
	$(BIN)/python -m bench.polling --json bench/results/$$(date +%Y%m%d-%H%M%S)-polling.json

#: The chaos soak (not part of `make test`, which runs a one-minute version): SOAK_ARGS="--duration 600 --seed 3".
SOAK_ARGS ?= --json soak/results/latest.json
soak: install
	$(BIN)/python -m soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache *.egg-info inferq.db* inferq-broker.db* .inferq-demo
