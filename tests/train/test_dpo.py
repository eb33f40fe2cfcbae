"""Tiny QLoRA DPO on CPU: LoRA trains, base stays, the reference is no second model, accuracy before/after."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import datasets
import pytest
import torch
from transformers import TrainerCallback

from data_builders.chartqa import build_chartqa
from vlm_tune.train import dpo

REPO = Path(__file__).resolve().parents[2]
DPO_RECIPE = REPO / "recipes" / "tiny" / "dpo_ratings.yaml"
MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
PAIR_FEATURES = datasets.Features(
    {"images": datasets.List(datasets.Image()), "prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES}
)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    """Preference pairs on synthetic charts: a short correct answer beats a hedged one."""
    charts = build_chartqa(32, 0, 8, seed=3, question_types=("count", "line_color"))

    def pairs(split):
        return datasets.Dataset.from_dict(
            {
                "images": [[row["image"]] for row in split],
                "prompt": [[{"role": "user", "content": row["query"]}] for row in split],
                "chosen": [[{"role": "assistant", "content": row["label"][0]}] for row in split],
                "rejected": [[{"role": "assistant", "content": f"Maybe {row['label'][0]}, I am not sure."}]
                             for row in split],
            },
            features=PAIR_FEATURES,
        )

    path = tmp_path_factory.mktemp("pairs") / "pairs"
    datasets.DatasetDict(train=pairs(charts["train"]), test=pairs(charts["test"])).save_to_disk(str(path))
    return path


def dpo_argv(model_dir, pairs, out, *extra):
    return ["--config", str(DPO_RECIPE), "--model_name_or_path", str(model_dir), "--build_tiny_model", "false",
            "--ratings_file", "", "--dataset_name", str(pairs), "--output_dir", str(out), "--disable_tqdm", "true",
            "--logging_steps", "1", *extra]


class Snapshot(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.adapters = set(getattr(model, "peft_config", {}))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_fresh_lora_dpo_trains_only_lora_against_adapters_disabled(tiny_arch_dir, pairs_dir, tmp_path):
    snapshot = Snapshot()
    out = tmp_path / "dpo"
    summary = dpo.main(dpo_argv(tiny_arch_dir, pairs_dir, out, "--max_steps", "8"), callbacks=[snapshot])
    assert snapshot.adapters == {"default"}, "a fresh adapter needs no reference copy: adapters off = reference"
    changed = {n for n in snapshot.before if not torch.equal(snapshot.before[n], snapshot.after[n])}
    assert any("lora_B" in n for n in changed)
    assert not (changed - snapshot.trainable), sorted(changed - snapshot.trainable)[:3]
    assert all("lora_" in n for n in snapshot.trainable)
    # before: policy == reference, every pair ties (50 %); after: the team's preference is learnt
    assert summary["pref_accuracy_before_pct"] == 50.0 and summary["mean_margin_before"] == 0.0
    assert summary["pref_accuracy_after_pct"] > 50.0 and summary["mean_margin_after"] > 0
    evaluation = json.loads((out / "preference_eval.json").read_text())
    assert evaluation["after"]["n"] == 8
    assert (out / "adapter_model.safetensors").is_file() and "beta: 0.1" in (out / "recipe.yaml").read_text()


def test_dpo_from_an_sft_adapter(tiny_model_dir, tiny_run_dir, pairs_dir, tmp_path):
    from safetensors.torch import load_file

    snapshot = Snapshot()
    out = tmp_path / "dpo-from-sft"
    summary = dpo.main(dpo_argv(tiny_model_dir, pairs_dir, out, "--max_steps", "4", "--sft_adapter", str(tiny_run_dir)),
                       callbacks=[snapshot])
    assert snapshot.adapters == {"default", "ref"}, "the frozen SFT adapter copy is the reference"
    sft = load_file(tiny_run_dir / "adapter_model.safetensors")
    start = {n.replace(".default", ""): p for n, p in snapshot.before.items() if ".default." in n}
    for name, value in sft.items():  # training starts from the exact SFT weights (no bf16 rounding)
        key = "base_model.model." + name.removeprefix("base_model.model.")
        assert torch.equal(start[key.replace(".weight", ".weight")].float(), value.float()), name
    assert summary["pref_accuracy_before_pct"] == 50.0
    assert not (out / "ref").exists(), "the reference copy is not saved with the result"


def test_missing_sft_adapter_is_one_clear_error(tiny_model_dir, pairs_dir, tmp_path):
    from vlm_tune.core.errors import UserError

    with pytest.raises(UserError, match="sft_adapter: no LoRA adapter in"):
        dpo.main(dpo_argv(tiny_model_dir, pairs_dir, tmp_path / "x", "--sft_adapter", str(tmp_path)))


def test_recipe_path_from_sample_ratings_to_dpo(tiny_model_dir, tmp_path):
    """What `make dpo` does on first use: sample ratings → pairs (with report) → DPO."""
    ratings = tmp_path / "ratings" / "ratings.csv"
    pairs = tmp_path / "pairs"
    summary = dpo.main(dpo_argv(tiny_model_dir, pairs, tmp_path / "out", "--ratings_file", str(ratings),
                                "--sample_ratings", "true", "--sample_charts", "16", "--max_steps", "2"))
    assert ratings.is_file() and (pairs / "dataset_dict.json").is_file()
    report = json.loads((pairs / "report.json").read_text())
    assert summary["train_pairs"] == report["pairs"]["train"] > 0
    assert report["rows_read"] == report["rows_used"] + sum(report["dropped"].values())
    assert summary["steps"] == 2


# --- the frozen vision tower: no backward into it; one vision pass per pair -----------------------
def test_no_backward_into_the_frozen_vision_tower_at_any_dpo_step(tiny_arch_dir, pairs_dir, tmp_path):
    """TRL re-enables gradient checkpointing after every reference forward, which re-hooks every
    sub-model's input embeddings (SigLIP's too): before the fix, backward reached the tower from step 2
    on and one hook more piled up per step."""
    from vision_probes import VisionBackwardCounter

    counter = VisionBackwardCounter()
    dpo.main(dpo_argv(tiny_arch_dir, pairs_dir, tmp_path / "gc", "--max_steps", "4", "--gradient_checkpointing",
                      "true", "--per_device_train_batch_size", "2", "--dataset_test_split", "none"),
             callbacks=[counter])
    assert len(counter.per_step) == 4
    assert counter.per_step == [0, 0, 0, 0], "backward reached the frozen vision tower"
    assert counter.hooks_per_step == [(0, 1)] * 4, "input-grad hooks: none on the tower, one on the text, every step"


def fixed_pair_batch(trainer, rows):
    """TRL's collator on the rows, the first image made wide so the pairs have different tile counts
    (padding images in the batch)."""
    rows = [dict(r) for r in rows]
    rows[0]["images"] = [rows[0]["images"][0].resize((160, 64))]
    return trainer._prepare_inputs(trainer.data_collator(rows))


def loss_logits_grads(trainer, compute_loss, batch):
    model = trainer.model
    model.zero_grad()
    loss, outputs = compute_loss(model, dict(batch), True)  # True: logits too (TRL recomputes them)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}  # num_tokens: cumulative
    return loss.detach(), outputs.logits.detach(), grads, metrics


def tower_images(trainer, compute_loss, batch) -> int:
    """Images the vision encoder ran on during one loss computation."""
    from vision_probes import TowerImages

    images = TowerImages(trainer.model)
    compute_loss(trainer.model, dict(batch), False)
    images.remove()
    return sum(images.calls)


@pytest.mark.parametrize("scope, passes_per_pair", [("lm", 1), ("lm+connector", 1), ("all", 2)])
def test_one_vision_pass_per_pair_matches_trls_own_path(tiny_arch_dir, pairs_dir, scope, passes_per_pair):
    """Our trainer and TRL's `_compute_loss` on the same model and batch: equal loss, logits, gradients
    and metrics; the tower runs once per pair for lm and lm+connector, twice for all (TRL: 4 times)."""
    from trl import DPOConfig, DPOTrainer, ModelConfig

    from vlm_tune.core.modeling import build_lora_config, keep_adapters_fp32, load_model, load_processor
    from vlm_tune.train.dpo_features import PairVisionDPOTrainer
    from vlm_tune.train.frozen_vision import keep_vision_frozen

    model_args = ModelConfig(model_name_or_path=str(tiny_arch_dir), load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             use_peft=True, lora_r=8, lora_alpha=16)
    pairs = datasets.load_from_disk(str(pairs_dir))["train"].select(range(3))
    trainer = PairVisionDPOTrainer(
        model=load_model(model_args), processing_class=load_processor(model_args, do_image_splitting=True),
        args=DPOConfig(output_dir="unused", per_device_train_batch_size=3, max_length=None, report_to="none",
                       gradient_checkpointing=True, bf16=False),
        train_dataset=pairs, peft_config=build_lora_config(model_args, scope))
    keep_adapters_fp32(trainer.model)
    keep_vision_frozen(trainer.model)
    trainer.model.train()
    trainer.model.gradient_checkpointing_enable(trainer.args.gradient_checkpointing_kwargs)
    torch.manual_seed(0)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:  # policy != reference, so the reference pass matters
            param.data.normal_(0, 0.05)
    batch = fixed_pair_batch(trainer, [pairs[i] for i in range(3)])
    images_per_row = batch["pixel_values"].abs().sum(dim=(2, 3, 4)).gt(0).sum(dim=1)
    assert images_per_row.unique().numel() == 2, "the wide image has other tiles: padding images in the batch"
    pair_images = int(images_per_row.sum()) // 2
    trl_compute_loss = partial(DPOTrainer._compute_loss, trainer)

    trl_loss, trl_logits, trl_grads, trl_metrics = loss_logits_grads(trainer, trl_compute_loss, batch)
    loss, logits, grads, metrics = loss_logits_grads(trainer, trainer._compute_loss, batch)

    assert torch.allclose(loss, trl_loss, rtol=1e-5, atol=1e-6) and loss.item() != pytest.approx(0.6931, abs=1e-3)
    assert torch.allclose(logits, trl_logits, rtol=1e-4, atol=1e-5)
    assert metrics == pytest.approx(trl_metrics, rel=1e-4, abs=1e-5)
    assert grads.keys() == trl_grads.keys() and any("lora" in n for n in grads)
    assert (scope == "all") == any("vision_model" in n for n in grads)
    for name, grad in grads.items():
        assert torch.allclose(grad, trl_grads[name], rtol=1e-4, atol=1e-6), name
    assert tower_images(trainer, trl_compute_loss, batch) == 4 * pair_images  # policy, reference × chosen, rejected
    assert tower_images(trainer, trainer._compute_loss, batch) == passes_per_pair * pair_images


def test_a_trl_without_the_overridden_method_is_one_clear_error(monkeypatch):
    from trl import DPOTrainer

    from vlm_tune.core.errors import UserError
    from vlm_tune.train.dpo_features import check_trl_surface

    monkeypatch.delattr(DPOTrainer, "_compute_loss")
    with pytest.raises(UserError, match=r"needs trl 1.16 .*pip install 'trl>=1.16,<1.17'"):
        check_trl_surface()
