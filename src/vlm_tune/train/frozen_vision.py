"""No backward pass through a frozen vision tower, at any step, whatever toggles gradient checkpointing.

Why it is needed: transformers' `gradient_checkpointing_enable` ends in `enable_input_require_grads()`,
which hooks the input embeddings of *every* sub-model — SigLIP's patch embeddings included — so autograd
records the frozen tower and the backward runs through it (none of its weights train; the connector
needs only its output). TRL re-enables checkpointing after every DPO reference forward and around
generation (`trl.models.utils.disable_gradient_checkpointing`), and transformers removes the earlier hooks
only for models loaded through its own peft integration (`_hf_peft_config_loaded`, which `get_peft_model`
does not set): one more hook on every embedding per toggle, and backward through the tower from DPO's
step 2 on.

`keep_vision_frozen(model)` (called once on the trainer's model, before training) installs two parts:

- **the guarantee**: a frozen tower's forward runs under `torch.no_grad()` (a forward pre-hook, and a
  forward hook that runs even when the forward raises), whoever hooks what: its output carries no graph,
  so no backward can reach it. "Frozen" is checked at each call: a tower with trainable parameters
  (`lora_scope: all`, `train_vision_tower`) runs as usual.
- **hygiene**: the model's `enable_input_require_grads` first removes the hooks of its earlier calls,
  then leaves none on a frozen tower, and turns the frozen tower's checkpointing off (under `no_grad`
  there is nothing to recompute; reentrant checkpointing would only warn "None of the inputs have
  requires_grad=True"). So at any time there is one such hook per trained embedding, none on the tower.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

HOOK_NAME = "make_inputs_require_grads"  # transformers' hook function (modeling_utils.enable_input_require_grads)
INSTALLED = "_vlm_tune_frozen_vision"


# --- which towers ----------------------------------------------------------------------------
def is_vision_tower(module: torch.nn.Module) -> bool:
    """A vision encoder (Idefics3/SmolVLM: `model.vision_model`, an `...VisionTransformer`)."""
    return isinstance(module, PreTrainedModel) and "vision" in type(module).__name__.lower()


def vision_towers(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if is_vision_tower(m)]


def is_frozen(module: torch.nn.Module) -> bool:
    return not any(param.requires_grad for param in module.parameters())


# --- the guarantee: a frozen tower runs under no_grad ----------------------------------------
class NoGradWhileFrozen:
    """Forward pre-hook + forward hook: grad mode off around a frozen tower's forward, restored after
    (a stack, so a nested call restores its own state)."""

    def __init__(self):
        self.saved: list[bool] = []

    def before(self, module, args, kwargs):
        self.saved.append(torch.is_grad_enabled())
        if is_frozen(module):
            torch.set_grad_enabled(False)

    def after(self, module, args, kwargs, output):
        if self.saved:  # (empty only if an earlier pre-hook raised before ours ran)
            torch.set_grad_enabled(self.saved.pop())

    def install(self, tower: torch.nn.Module) -> None:
        tower.register_forward_pre_hook(self.before, with_kwargs=True)
        tower.register_forward_hook(self.after, with_kwargs=True, always_call=True)


# --- hygiene: one input-grad hook per trained embedding, none on a frozen tower ----------------
def drop_input_grad_hooks(modules) -> int:
    """Remove transformers' `make_inputs_require_grads` hooks from `modules`; returns how many."""
    removed = 0
    for module in modules:
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") == HOOK_NAME:
                del module._forward_hooks[key]
                removed += 1
    return removed


def settle_frozen_towers(model) -> None:
    """No input-grad hook and no checkpointing inside a frozen tower."""
    for tower in vision_towers(model):
        if is_frozen(tower):
            drop_input_grad_hooks(tower.modules())
            for module in tower.modules():
                if getattr(module, "gradient_checkpointing", False):
                    module.gradient_checkpointing = False


def wrap_enable_input_require_grads(model: PreTrainedModel) -> None:
    """Make `model.enable_input_require_grads()` (an instance attribute shadows the method) idempotent
    and tower-free; transformers calls it at the end of every checkpointing enable."""
    original = model.enable_input_require_grads

    def enable_input_require_grads():
        drop_input_grad_hooks(model.modules())  # the earlier calls' hooks (transformers forgets them)
        original()
        settle_frozen_towers(model)

    model.enable_input_require_grads = enable_input_require_grads


# --- install ---------------------------------------------------------------------------------
def keep_vision_frozen(model) -> None:
    """Install both parts on `model` (the trainer's model, PEFT-wrapped or not); again is a no-op."""
    for module in model.modules():
        if not isinstance(module, PreTrainedModel) or getattr(module, INSTALLED, False):
            continue
        if is_vision_tower(module):
            NoGradWhileFrozen().install(module)
        wrap_enable_input_require_grads(module)
        setattr(module, INSTALLED, True)
    settle_frozen_towers(model)  # what earlier enables left on the tower
