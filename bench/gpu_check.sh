#!/usr/bin/env bash
# Every GPU verification of vlm-tune in ONE command on a lent GPU machine (issue 17, "GPU, one shot").
#
#   Here (once):  bash bench/gpu_wheels.sh                  # the wheels the GPU machine lacks → .whl/ (~57 MiB)
#   Device tool:  run  command "bash bench/gpu_check.sh"  carry [".whl"]  timeout_s 600
#   Dry run:      GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh   # prints the steps and their time limits
#
# The machine has no network. Its Python 3.12 holds torch 2.11 (CUDA), accelerate, tokenizers 0.23.2,
# huggingface-hub 1.33, pandas, pyarrow, matplotlib, pillow, pytest, torchvision …, and transformers 5.17;
# carried as wheels (bench/gpu_wheels.sh says why each): transformers 5.23.0 (pyproject pins 5.23), trl
# 1.16.0, peft 0.21.2, bitsandbytes 0.50.2, datasets 5.2.0, dill, multiprocess, evaluate, num2words,
# krippendorff — ≈ 57 MiB, installed with --target /tmp/site and put first on PYTHONPATH (with src/ and the
# repo root: nothing is pip-installed into the machine's own environment). The benches call
# `$(dirname python)/vlm-tune`, so a 3-line entry-point script is written there for the run (removed at exit).
#
# Steps, most important first; each has a time limit, and all of them share a deadline
# (GPU_CHECK_BUDGET_S, default 530 s ≈ 9 min) so the command ends inside the device tool's 10 minutes:
#   setup     install the carried wheels, the vlm-tune entry point
#   versions  package versions, nvidia-smi, torch's view of the GPU
#   tests     pytest -m gpu (the GPU-marked tests)
#   plan      `vlm-tune plan` vs the measured peak GPU memory of the 256M SFT recipe as it is (bf16, 4-bit,
#             batch 4 × accumulation 4), 2 optimizer steps (python -m bench.bench_arch --device cuda)
#   export    a short tiny SFT run, `vlm-tune export` of it (merge verified against the adapter), and
#             AutoProcessor (torchvision is there) loading the tiny SmolVLM2 folder and the exported one
#   bench_sft python -m bench.bench_sft --device cuda rows (256M: plain TRL vs vlm-tune, bf16 vs QLoRA)
#   bench_dpo python -m bench.bench_dpo GPU rows, when that script has them (a --device flag)
#
# Results under $OUT (the device tool's output folder; ./gpu-results when unset), at most 8 files as the
# tool brings back: summary.md (each step's status, time and tables), gpu_check.log (all output),
# results.tgz (every step's log and JSON, the export report and model card).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu-results}
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-530}
SFT_ARCHS=${GPU_CHECK_SFT_ARCHS:-256m}
WORK=${GPU_CHECK_WORKDIR:-/tmp/vlm-tune-gpu}
SITE=/tmp/site
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUT" "$WORK/logs"
SUMMARY=$OUT/summary.md
LOG=$OUT/gpu_check.log
: > "$SUMMARY"
: > "$LOG"

export PYTHONPATH="$SITE:$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled PYTHONUNBUFFERED=1 TQDM_DISABLE=1

# --- helpers ---------------------------------------------------------------------------------
say() { echo "$*" | tee -a "$LOG"; }
remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT_S COMMAND: run COMMAND (a bash string) under `timeout` (the smaller of LIMIT_S and what is
# left of the budget), its output in $WORK/logs/NAME.log and gpu_check.log, its status in summary.md.
# timeout signals the whole process group, so the trainings a bench started stop with it.
STATUS=()
step() {
  local name=$1 limit=$2 cmd=$3 left t0 rc status
  left=$(( $(remaining) - 15 ))  # 15 s kept for packing the results
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then
    status="skipped: budget spent"
    STATUS+=("| $name | $status | 0 |")
    say "== $name: $status"
    return 0
  fi
  say "== $name (limit ${limit} s): $cmd"
  if [[ $DRY == 1 ]]; then
    STATUS+=("| $name | dry run (limit ${limit} s) | 0 |")
    return 0
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$cmd" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  tr '\r' '\n' < "$WORK/logs/$name.log" | grep -v '^\s*$' >> "$LOG"
  case $rc in
    0) status=ok ;;
    124|137) status="TIMED OUT after ${limit} s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  STATUS+=("| $name | $status | $(( $(date +%s) - t0 )) |")
  say "== $name: $status"
  return 0
}

SHIM=""
cleanup() { [[ -n $SHIM ]] && rm -f "$SHIM"; }
trap cleanup EXIT

# --- setup: carried wheels, entry point ------------------------------------------------------
if [[ $DRY != 1 ]]; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    say "== setup: installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      >> "$LOG" 2>&1 || say "== setup: pip install FAILED (the steps below will say what is missing)"
  else
    say "== setup: no .whl/*.whl carried (run bench/gpu_wheels.sh here and carry .whl): using what is installed"
  fi
  BIN=$($PY -c 'import os, sys; print(os.path.dirname(sys.executable))')
  if [[ ! -e $BIN/vlm-tune ]]; then  # what `pip install -e .` would write; the benches call BIN/vlm-tune
    SHIM=$BIN/vlm-tune
    printf '#!%s\nimport sys\nfrom vlm_tune.cli import main\nsys.exit(main())\n' "$($PY -c 'import sys; print(sys.executable)')" > "$SHIM"
    chmod +x "$SHIM"
  fi
  export PATH="$BIN:$PATH"
else
  say "== setup: (dry run) pip install --target $SITE .whl/*.whl; vlm-tune entry point next to python"
fi

# --- the steps -------------------------------------------------------------------------------
step versions 40 "set -e
  $PY - <<'EOF'
import importlib, platform
print('python', platform.python_version())
for name in ('torch', 'transformers', 'trl', 'peft', 'bitsandbytes', 'datasets', 'accelerate', 'tokenizers',
             'huggingface_hub', 'evaluate', 'torchvision', 'num2words'):
    try:
        module = importlib.import_module(name)
        print(f'{name:16} {getattr(module, \"__version__\", \"?\"):12} {module.__file__}')
    except Exception as exc:
        print(f'{name:16} MISSING ({type(exc).__name__}: {exc})')
import torch
print('cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0), '| bf16', torch.cuda.is_bf16_supported())
import vlm_tune.cli
EOF
  nvidia-smi
  vlm-tune --help | head -3"

step tests 150 "$PY -m pytest -q -p no:cacheprovider -m gpu -o addopts= --junitxml '$WORK/logs/pytest-gpu.xml' \
  \$(grep -rlE 'mark\\.gpu' tests --include='*.py')"

step plan 200 "$PY -m bench.bench_arch --device cuda --arch smolvlm-256m --recipes sft_chartqa --steps 2 --captions 0 \
  --timeout 150 --workdir '$WORK/arch' --json '$WORK/logs/arch-cuda.json' \
  && $PY -m bench.bench_arch --table '$WORK/logs/arch-cuda.json' > '$WORK/logs/arch-cuda.md' \
  && cat '$WORK/logs/arch-cuda.md' \
  && $PY -c \"import json; r = json.load(open('$WORK/logs/arch-cuda.json'))['results'][0]; \
print('plan memory (MiB):', json.dumps(r['plan'].get('memory_mb'), indent=1)); print('measured peak GPU allocated:', r.get('peak_gpu_mb'))\""

step export 150 "set -e
  vlm-tune make-tiny-model --output '$WORK/export/tiny-smolvlm'
  vlm-tune make-tiny-model --output '$WORK/export/tiny-smolvlm2' --arch smolvlm2
  vlm-tune sft --config recipes/tiny/sft_chartqa.yaml --model_name_or_path '$WORK/export/tiny-smolvlm' \
    --dataset_name '$WORK/export/chartqa' --synthetic_sizes 160 16 48 --max_steps 40 --eval_strategy no \
    --save_strategy no --eval_after_train false --num_validation_samples 0 --report_to none \
    --output_dir '$WORK/export/run' --overwrite_output_dir true
  vlm-tune export --adapter '$WORK/export/run' --output '$WORK/export/merged' --rows 32 --overwrite
  cp '$WORK/export/merged/export_report.json' '$WORK/logs/export_report.json'
  cp '$WORK/export/merged/README.md' '$WORK/logs/export_model_card.md'
  $PY - <<'EOF'
from transformers import AutoModelForImageTextToText, AutoProcessor
for folder in ('$WORK/export/merged', '$WORK/export/tiny-smolvlm2'):
    processor = AutoProcessor.from_pretrained(folder)  # torchvision is installed here: the stock route
    model = AutoModelForImageTextToText.from_pretrained(folder)
    print(folder, type(processor).__name__, type(model).__name__, 'peft' in type(model).__module__)
EOF"

step bench_sft 220 "$PY -m bench.bench_sft --device cuda --arch $SFT_ARCHS --rows 64 \
  --cases plain same-budget ours ours-bf16 --workdir '$WORK/bench-sft' --json '$WORK/logs/bench-sft-cuda.json'"

if [[ -f bench/bench_dpo.py ]] && $PY -m bench.bench_dpo --help 2>/dev/null | grep -q -- '--device'; then
  step bench_dpo 150 "$PY -m bench.bench_dpo --device cuda --rows 256m --workdir '$WORK/bench-dpo' \
    --json '$WORK/logs/bench-dpo-cuda.json'"
elif [[ $DRY == 1 ]]; then
  STATUS+=("| bench_dpo | dry run: runs only if bench/bench_dpo.py has a --device flag | 0 |")
  say "== bench_dpo: python -m bench.bench_dpo --device cuda ... (only if bench/bench_dpo.py has --device)"
else
  STATUS+=("| bench_dpo | skipped: bench/bench_dpo.py missing or without GPU rows (no --device flag) | 0 |")
  say "== bench_dpo: skipped (bench/bench_dpo.py missing or without a --device flag)"
fi

# --- results ---------------------------------------------------------------------------------
{
  echo "# vlm-tune GPU check — $(date -Iseconds)"
  echo
  echo "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  printf '%s\n' "${STATUS[@]}"
  echo
  for table in "$WORK/logs/arch-cuda.md"; do
    [[ -f $table ]] && { echo "## plan vs measured (bench_arch --device cuda)"; echo; cat "$table"; echo; }
  done
  for name in bench_sft bench_dpo; do
    if [[ -f $WORK/logs/$name.log ]]; then
      echo "## $name (table lines of its log)"
      echo
      tr '\r' '\n' < "$WORK/logs/$name.log" | grep -E '^\||^[a-z0-9.]+$|FAILED|first logged step|token totals' | tail -40
      echo
    fi
  done
  if [[ -f $WORK/logs/export_report.json ]]; then
    echo "## export_report.json"
    echo
    echo '```json'
    head -c 4000 "$WORK/logs/export_report.json"
    echo
    echo '```'
  fi
} > "$SUMMARY"
if [[ $DRY != 1 ]]; then
  tar -czf "$OUT/results.tgz" -C "$WORK" logs 2>> "$LOG"
fi
echo "total $(( $(date +%s) - START )) s" >> "$SUMMARY"
cat "$SUMMARY"
