"""One vision pass per preference pair in TRL's DPO: `PairVisionDPOTrainer`, a thin `DPOTrainer` subclass.

TRL 1.16 runs the image encoder 4 times per pair: `DataCollatorForVisionPreference` repeats a pair's
images for its chosen and rejected rows (rows [0, B) chosen, [B, 2B) rejected: the same pixels), and
`DPOTrainer._compute_loss` runs the policy and the reference (the same model, adapters disabled) on all
2B rows. What the image features depend on decides how many of those passes are one computation:

    lora_scope    tower    connector   passes of the tower per pair, and how
    lm            frozen   frozen      1: the connector's output, once under no_grad, fed to all four
                                       forwards as `mm_encoder_outputs` (transformers' precomputed features)
    lm+connector  frozen   adapted     1: the tower once under no_grad; the connector runs in each forward
                                       (with grads for the policy, adapters off for the reference)
    all           adapted  adapted     2: once per forward (policy, reference), chosen/rejected not repeated

A module counts as frozen when it has no trainable parameter and no adapter layer (the reference
disables adapters: with one, its features differ from the policy's); this is read from the model, so an
SFT adapter that adapts the connector is handled too. The tiles still go through the image processor
twice per pair (TRL's collator): under 1 % of a step at the real budgets (docs/benchmarks.md).

The override is one method, `_compute_loss(model, inputs, return_outputs)`: it either swaps the batch's
pixel inputs for the precomputed features, or runs TRL's own `_compute_loss` while the tower's forward
answers from the pair's one pass. TRL's loss, reference handling and metrics are untouched, and anything
this does not recognise (rows whose halves differ, another architecture, hidden states asked for) goes
down TRL's path unchanged. Pinned: trl>=1.16,<1.17 (`_compute_loss`, the collator's row order) and
transformers>=5.23,<5.24 (Idefics3's `get_image_features`, `mm_encoder_outputs`); see pyproject.toml.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from trl import DPOTrainer

from vlm_tune.core.errors import UserError

PIXEL_KEYS = ("pixel_values", "pixel_attention_mask")


def check_trl_surface() -> None:
    """The one private method this subclass overrides must exist with TRL 1.16's signature."""
    import trl

    method = getattr(DPOTrainer, "_compute_loss", None)
    if method is None or list(inspect.signature(method).parameters)[:4] != ["self", "model", "inputs", "return_outputs"]:
        raise UserError(f"vlm-tune dpo needs trl 1.16 (DPOTrainer._compute_loss(model, inputs, return_outputs)); "
                        f"trl {trl.__version__} is installed: pip install 'trl>=1.16,<1.17'")


# --- what is shared --------------------------------------------------------------------------
def is_shared(module: torch.nn.Module) -> bool:
    """Same output for policy and reference: nothing trains in it and no adapter can switch it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return not any(p.requires_grad for p in module.parameters()) and not any(
        isinstance(m, BaseTunerLayer) for m in module.modules())


def image_parts(model):
    """(Idefics3/SmolVLM inner model, vision tower, connector), or None for another architecture."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    tower, connector = getattr(inner, "vision_model", None), getattr(inner, "connector", None)
    if tower is None or connector is None or not hasattr(inner, "get_image_features"):
        return None
    return inner, tower, connector


def takes_features(inner) -> bool:
    return "mm_encoder_outputs" in inspect.signature(type(inner).forward).parameters


def halves_equal(*tensors: torch.Tensor | None) -> bool:
    """Each tensor is [X; X] (None counts as equal)."""
    for tensor in tensors:
        if tensor is None:
            continue
        if tensor.shape[0] % 2 or not torch.equal(*tensor.chunk(2)):
            return False
    return True


# --- lm: features once, as mm_encoder_outputs ------------------------------------------------
def with_pair_features(inner, inputs: dict) -> dict:
    """The batch with its pixel inputs replaced by the connector's output for each pair's images,
    computed once under no_grad and given to the chosen and the rejected row."""
    pixels, mask = inputs["pixel_values"], inputs.get("pixel_attention_mask")
    n = pixels.shape[0] // 2
    with torch.no_grad():
        features = inner.get_image_features(pixels[:n], None if mask is None else mask[:n], return_dict=True)
    per_row = list(features.pooler_output)
    rest = {k: v for k, v in inputs.items() if k not in PIXEL_KEYS}
    return {**rest, "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=per_row + per_row)}}


# --- lm+connector, all: the tower once per pair ----------------------------------------------
@contextmanager
def tower_once_per_pair(tower: torch.nn.Module, reuse: bool):
    """While active, the tower's forward on [X; X] runs on X and returns its output twice; with `reuse`
    (a frozen tower: the policy's and the reference's outputs are equal) a later call on the same X
    returns the first call's output (computed under no_grad)."""
    original = tower.forward
    own_forward = "forward" in tower.__dict__  # e.g. accelerate's hook wrapper: put it back as it was
    memo: list = []  # [pixels, mask, last_hidden_state] of the first call

    def forward(pixel_values, patch_attention_mask=None, **kwargs):
        if kwargs.get("output_hidden_states") or kwargs.get("output_attentions") or not halves_equal(
                pixel_values, patch_attention_mask):
            return original(pixel_values, patch_attention_mask=patch_attention_mask, **kwargs)
        n = pixel_values.shape[0] // 2
        pixels, mask = pixel_values[:n], None if patch_attention_mask is None else patch_attention_mask[:n]
        if memo and torch.equal(memo[0], pixels) and (mask is None or torch.equal(memo[1], mask)):
            hidden = memo[2]
        else:
            with torch.no_grad() if reuse else nullcontext():
                hidden = original(pixels, patch_attention_mask=mask, **kwargs).last_hidden_state
            if reuse:
                memo[:] = [pixels, mask, hidden]
        return BaseModelOutputWithPooling(last_hidden_state=torch.cat([hidden, hidden]))

    tower.forward = forward
    try:
        yield
    finally:
        if own_forward:
            tower.forward = original
        else:
            del tower.forward


# --- trainer ---------------------------------------------------------------------------------
class PairVisionDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with one vision pass per preference pair (module docstring); nothing else differs."""

    def __init__(self, *args, **kwargs):
        check_trl_surface()
        super().__init__(*args, **kwargs)

    def _compute_loss(self, model, inputs, return_outputs):
        parts = image_parts(self.accelerator.unwrap_model(model))
        if parts is None or inputs.get("pixel_values") is None or not halves_equal(
                *(inputs.get(k) for k in PIXEL_KEYS)):
            return super()._compute_loss(model, inputs, return_outputs)
        inner, tower, connector = parts
        tower_shared = is_shared(tower)
        # FSDP / ZeRO-3 gather parameters in the model's own forward only: no features computed outside it
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        if tower_shared and is_shared(connector) and takes_features(inner) and not sharded:
            return super()._compute_loss(model, with_pair_features(inner, inputs), return_outputs)
        with tower_once_per_pair(tower, reuse=tower_shared):
            return super()._compute_loss(model, inputs, return_outputs)
