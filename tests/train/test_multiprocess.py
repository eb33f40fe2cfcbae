"""Two CPU processes through `accelerate launch` + recipes/accelerate/ddp.yaml (gloo): each rank trains on
its own rows, only rank 0 writes and prints, and the effective batch counts the processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import yaml

from helpers import REPO, sft_argv

ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate"


def free_port() -> int:
    with socket.socket() as s:  # other test runs on this machine may hold accelerate's default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_trace(path) -> list[list[str]]:
    return [json.loads(line)["ids"] for line in path.read_text().splitlines()]


def test_ddp_two_cpu_processes(tiny_model_dir, tiny_chartqa_dir, tmp_path):
    out, trace = tmp_path / "run", tmp_path / "trace"  # the trace lives outside the run folder
    per_device, accumulation, steps = 2, 2, 2
    argv = sft_argv(tiny_model_dir, tiny_chartqa_dir, out, "--max_steps", str(steps), "--save_strategy", "no",
                    "--eval_after_train", "false", "--eval_strategy", "no", "--per_device_train_batch_size", str(per_device),
                    "--gradient_accumulation_steps", str(accumulation), "--num_train_epochs", "1")
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(VLM_TUNE_TRACE_BATCHES=str(trace), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / "ddp.yaml"),
               "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "vlm_tune.cli", "sft", *argv]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    # both ranks trained, on different rows: micro-batch k of rank 0 and of rank 1 share no row, and the
    # first steps × accumulation micro-batches of both ranks are distinct rows (one epoch, no repeats)
    ranks = [read_trace(trace / f"rank-{r}.jsonl") for r in (0, 1)]
    used = steps * accumulation
    assert all(len(batches) >= used for batches in ranks), "each rank collates its own batches"
    assert all(len(ids) == per_device for batches in ranks for ids in batches[:used])
    for batch0, batch1 in zip(ranks[0][:used], ranks[1][:used]):
        assert not set(batch0) & set(batch1), "ranks trained on the same rows in one step"
    rows = [row for batches in ranks for ids in batches[:used] for row in ids]
    assert len(set(rows)) == len(rows) == 2 * used * per_device

    # only rank 0 wrote and printed: one summary in the output, one run folder with one summary file
    assert done.stdout.count("vlm-tune sft — run summary") == 1, done.stdout[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == steps
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == steps
    assert (out / "adapter_model.safetensors").is_file() and (out / "recipe.yaml").is_file()
    assert not [p.name for p in out.iterdir() if re.search(r"rank|checkpoint", p.name)]

    # effective batch = per device × accumulation × processes, in the JSON and on screen
    effective = per_device * accumulation * 2
    assert summary["effective_batch"] == effective
    assert summary["batch_arithmetic"] == f"{per_device} per device × {accumulation} accumulation × 2 process(es)"
    assert re.search(rf"effective_batch\s+{effective}\b", done.stdout)


@pytest.mark.parametrize("name", ["ddp", "fsdp_qlora", "zero3"])
def test_accelerate_configs_load_and_name_their_launch_line(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.num_machines == 1 and not config.use_cpu
    text = path.read_text()
    assert f"accelerate launch --config_file recipes/accelerate/{name}.yaml" in text
    assert f"make sft ACCELERATE={name}" in text
    if name == "fsdp_qlora":
        assert config.distributed_type == "FSDP"
        assert "bnb_4bit_quant_storage" in text
        assert yaml.safe_load(text)["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    if name == "zero3":
        assert config.distributed_type == "DEEPSPEED" and config.deepspeed_config["zero_stage"] == 3
