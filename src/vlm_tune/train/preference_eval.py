"""DPO's held-out preference accuracy: does the implicit reward rank the chosen answer above the
rejected one on the test pairs, before training and after? Written to `preference_eval.json` and
the run summary (`pref_accuracy_before_pct`, `pref_accuracy_after_pct`, mean margins)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
from trl.trainer.utils import use_adapter

from vlm_tune.core.io import atomic_write_text


# --- score -----------------------------------------------------------------------------------
def _sequence_logps(model, batch) -> torch.Tensor:
    """Sum of log-probs of the completion tokens, per sequence."""
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].to(logits.dtype)
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=1)


@torch.no_grad()
def preference_accuracy(model, processor, dataset, beta: float, batch_size: int = 8) -> dict:
    """Does the implicit reward β·(log π − log π_ref) rank chosen above rejected? Ties count half
    (before training π = π_ref, so every pair ties: 50 %)."""
    collator = DataCollatorForVisionPreference(processor)
    reference = "ref" if "ref" in getattr(model, "peft_config", {}) else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wins, margins = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        policy = _sequence_logps(model, batch)
        with use_adapter(model, adapter_name=reference):
            ref = _sequence_logps(model, batch)
        rewards = beta * (policy - ref)
        chosen, rejected = rewards.chunk(2)
        margin = chosen - rejected
        wins += (torch.where(margin > 0, 1.0, torch.where(margin == 0, 0.5, 0.0))).tolist()
        margins += margin.tolist()
    model.train(was_training)
    return {"preference_accuracy": sum(wins) / len(wins), "mean_margin": sum(margins) / len(margins), "n": len(wins)}


# --- before and after ------------------------------------------------------------------------
class PreferenceEval:
    """Preference accuracy on the test pairs before and after training; nothing without test pairs."""

    def __init__(self, processor, test_dataset, beta: float):
        self.processor, self.test_dataset, self.beta = processor, test_dataset, beta
        self.before: dict | None = None
        self.after: dict | None = None

    def score_before(self, model) -> None:
        if self.test_dataset is not None:
            self.before = preference_accuracy(model, self.processor, self.test_dataset, self.beta)

    def score_after(self, model) -> None:
        if self.test_dataset is not None:
            self.after = preference_accuracy(model, self.processor, self.test_dataset, self.beta)

    def summary(self) -> dict:
        """Entries for the run summary (none unless both scores exist)."""
        before, after = self.before, self.after
        if not (before and after):
            return {}
        return {
            "test_pairs": before["n"],
            "pref_accuracy_before_pct": 100 * before["preference_accuracy"],
            "pref_accuracy_after_pct": 100 * after["preference_accuracy"],
            "mean_margin_before": before["mean_margin"],
            "mean_margin_after": after["mean_margin"],
        }

    def write(self, out: Path) -> None:
        """`preference_eval.json` in the run folder (when both scores exist)."""
        if self.before and self.after:
            atomic_write_text(out / "preference_eval.json",
                              json.dumps({"before": self.before, "after": self.after}, indent=2) + "\n")
