# vlm-tune — every target sets up its own .venv first (CPU torch on CPU machines, CUDA torch on GPU ones).
#   make test                                   run the test suite (CPU, ~minutes)
#   make sft                                    QLoRA SFT of the tiny model on synthetic ChartQA (offline, CPU)
#   make sft RECIPE=recipes/smolvlm-256m/sft_chartqa.yaml ARGS="--max_steps 100"
#   make dpo                                    DPO of the tiny model on a sample team-ratings set (offline, CPU)
#   make sweep                                  a 2×2 grid of the tiny SFT into runs/sweep-tiny + a comparison (CPU, minutes)
#   make caption                                train the tiny captioner on synthetic scenes, caption a held-out folder
#   make loop                                   captioner → candidates → simulated team rates via the server → DPO → re-caption, measured
#   make sft ACCELERATE=ddp NPROC=2             the same SFT in 2 processes (accelerate; gloo on CPU, NCCL on GPUs)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= recipes/tiny/sft_chartqa.yaml
DPO_RECIPE ?= recipes/tiny/dpo_ratings.yaml
# make caption: the captioner run, its training scenes and the held-out folder it captions (kohya + diffusers)
CAPTION_RECIPE ?= recipes/tiny/sft_captioner.yaml
CAPTION_RUN ?= runs/tiny-sft-captioner
SCENES ?= artifacts/scenes-synth
HELDOUT ?= artifacts/scenes-heldout
CAPTION_ARGS ?= --format both --mode dual --trigger sks
ARGS ?=
# make sweep: every combination of SWEEP_GRID, one run folder each, finished runs skipped on a rerun;
# SWEEP_ARGS apply to every run (add --seeds 0,1 to repeat each point per seed). Then: vlm-tune compare.
SWEEP_DIR ?= runs/sweep-tiny
SWEEP_GRID ?= learning_rate=2e-4,1e-3 lora_r=8,32
SWEEP_ARGS ?= --max_steps 150 --eval_steps 50
# Multi-process: ACCELERATE names a config in recipes/accelerate/ (ddp, fsdp_qlora, zero3); empty = one process.
ACCELERATE ?=
NPROC ?= 2
SFT_RUN = $(if $(ACCELERATE),$(BIN)/accelerate launch --config_file recipes/accelerate/$(ACCELERATE).yaml --num_processes $(NPROC) -m vlm_tune.cli,$(BIN)/vlm-tune)
PYTEST_ARGS ?= -q
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# CPU: the pinned CPU build (a local wheel on our machines); an unpinned torch would pull GBs of CUDA wheels.
# GPU: PyPI's default Linux wheel is the CUDA build. Override e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= $(if $(HAS_GPU),torch,torch==2.13.0)

.PHONY: install sft dpo caption sweep test clean-runs

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
	@if [ -n "$(ACCELERATE)" ] && [ ! -f recipes/accelerate/$(ACCELERATE).yaml ]; then \
		echo "error: no accelerate config recipes/accelerate/$(ACCELERATE).yaml (have: $$(ls recipes/accelerate | sed 's/.yaml//' | tr '\n' ' '))"; exit 2; fi
	$(SFT_RUN) sft --config $(RECIPE) $(ARGS)

dpo: install
	$(BIN)/vlm-tune dpo --config $(DPO_RECIPE) $(ARGS)

# Trains only if the adapter is missing; captions only images without a caption (rerun = resume).
caption: install
	@test -f $(CAPTION_RUN)/adapter_config.json || $(BIN)/vlm-tune sft --config $(CAPTION_RECIPE) --output_dir $(CAPTION_RUN) $(ARGS)
	@test -d $(HELDOUT)/images || $(BIN)/python -m data_builders.scenes export --dataset $(SCENES) --split test --output $(HELDOUT)
	$(BIN)/vlm-tune caption $(HELDOUT)/images --adapter $(CAPTION_RUN) $(CAPTION_ARGS)
	$(BIN)/python -m data_builders.scenes score --heldout $(HELDOUT)

sweep: install
	$(BIN)/vlm-tune sweep --config $(RECIPE) --sweep_dir $(SWEEP_DIR) --grid $(SWEEP_GRID) $(SWEEP_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# make loop: the captioner learns a team's taste, end to end (docs/loop.md); a rerun continues a stopped run,
# LOOP_ARGS="--overwrite" starts a finished one over. Trains runs/tiny-sft-captioner-loop first if it is missing.
LOOP_DIR ?= runs/tiny-loop
LOOP_ARGS ?=
.PHONY: loop
loop: install
	$(BIN)/python -m vlm_tune.runs.loop --run_dir $(LOOP_DIR) $(LOOP_ARGS)

clean-runs:
	rm -rf runs artifacts
