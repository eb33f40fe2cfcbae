#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh installs on the lent GPU machine (no network there) into .whl/.
#
#   bash bench/gpu_wheels.sh          # then: device run with carry [".whl"], command "bash bench/gpu_check.sh"
#
# The GPU machine's Python 3.12 already has torch 2.11 (CUDA), accelerate 1.15, tokenizers 0.23.2,
# huggingface-hub 1.33, safetensors 0.8, regex, pyyaml, pandas, pyarrow, matplotlib, pillow, psutil, jinja2,
# pytest, tensorboard, xxhash, fsspec, typer (/work/.library/device/KINDS.md). What it lacks or holds at
# another version than pyproject.toml pins, and what each is for:
#   transformers 5.23.0   pinned >=5.23,<5.24; the machine has 5.17 (DPO's one-vision-pass path needs 5.23's
#                         mm_encoder_outputs). Its runtime check wants huggingface-hub >=1.31,<3 and
#                         tokenizers >=0.23.1,<0.24: the machine's 1.33 / 0.23.2 pass, so neither is carried.
#   trl 1.16.0            SFTTrainer / DPOTrainer (missing there)
#   peft 0.21.2           pinned <0.22; the machine's version is not recorded, so carried to be sure
#   bitsandbytes 0.50.2   4-bit NF4 (missing there); 43 MB, most of the budget
#   datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19   data loading (missing there)
#   evaluate 0.4.6        the relaxed-accuracy metric module (missing there)
#   num2words 0.5.14      SmolVLM2's processor refuses to load without it (its docopt is for the CLI only)
#   krippendorff 0.9.0    the ratings builder (DPO's sample pairs)
# Not carried: wandb, fastapi/uvicorn (rating page), selenium: the GPU check does not use them.
# Total ≈ 59 MB (57 MiB) + the working tree (~1.5 MB): under the device tool's 64 MiB per run.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  transformers==5.23.0 trl==1.16.0 peft==0.21.2 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1
  multiprocess==0.70.19 evaluate==0.4.6 num2words==0.5.14 krippendorff==0.9.0
)
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude; }
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
# One version of each: a second one stops the whole install there.
ls .whl/*.whl | sed -E 's#.*/([^-]+)-.*#\1#' | sort | uniq -d | while read -r dup; do
  echo "error: .whl holds more than one $dup wheel; keep one" >&2; exit 1
done
du -ch .whl/*.whl | tail -1
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
if (( total > 62 * 1024 * 1024 )); then
  echo "error: .whl is $((total / 1024 / 1024)) MiB: with the working tree that is over the 64 MiB a run carries" >&2
  exit 1
fi
