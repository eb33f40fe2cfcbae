# vlm-tune — every target sets up its own .venv first (CPU torch on CPU machines, CUDA torch on GPU ones).
#   make test                                   run the test suite (CPU, ~minutes)
#   make sft                                    QLoRA SFT of the tiny model on synthetic ChartQA (offline, CPU)
#   make sft RECIPE=recipes/smolvlm-256m/sft_chartqa.yaml ARGS="--max_steps 100"
#   make dpo                                    DPO of the tiny model on a sample team-ratings set (offline, CPU)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= recipes/tiny/sft_chartqa.yaml
DPO_RECIPE ?= recipes/tiny/dpo_ratings.yaml
ARGS ?=
PYTEST_ARGS ?= -q
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# CPU: the pinned CPU build (a local wheel on our machines); an unpinned torch would pull GBs of CUDA wheels.
# GPU: PyPI's default Linux wheel is the CUDA build. Override e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= $(if $(HAS_GPU),torch,torch==2.13.0)

.PHONY: install sft dpo test clean-runs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[dev]"
	@if [ -z "$(HAS_GPU)" ] && $(BIN)/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
		echo "error: CUDA wheels were installed on a machine without a GPU; remove $(VENV) and set TORCH"; exit 1; fi
	touch $@

install: $(VENV)/.installed

sft: install
	$(BIN)/vlm-tune sft --config $(RECIPE) $(ARGS)

dpo: install
	$(BIN)/vlm-tune dpo --config $(DPO_RECIPE) $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-runs:
	rm -rf runs artifacts
