"""Probes on the vision tower for the training tests: backward passes into it, input-grad hooks on the
embeddings, and how many images its encoder runs on."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

HOOK_NAME = "make_inputs_require_grads"  # transformers' enable_input_require_grads hook


def vision_tower(model) -> torch.nn.Module:
    return next(m for name, m in model.named_modules() if name.endswith("model.vision_model"))


def input_grad_hooks(module: torch.nn.Module) -> int:
    return sum(getattr(h, "__name__", "") == HOOK_NAME for h in module._forward_hooks.values())


class VisionBackwardCounter(TrainerCallback):
    """Counts gradients arriving at any output of any module of the vision tower (0: no backward pass
    reached it), and, at each step end, the input-grad hooks on the tower's and the text's embeddings."""

    def __init__(self):
        self.backward_events = 0
        self.per_step: list[int] = []  # backward_events after each step
        self.hooks_per_step: list[tuple[int, int]] = []  # (on the tower's embeddings, on the text embeddings)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.tower = vision_tower(model)
        self.text_embeddings = model.get_input_embeddings()
        for module in self.tower.modules():
            module.register_forward_hook(self._watch)

    def _watch(self, module, inputs, output):
        tensor = output if torch.is_tensor(output) else getattr(output, "last_hidden_state", None)
        if tensor is not None and tensor.requires_grad:
            tensor.register_hook(self._count)

    def _count(self, grad):
        self.backward_events += 1

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step.append(self.backward_events)
        self.hooks_per_step.append((input_grad_hooks(self.tower.get_input_embeddings()),
                                    input_grad_hooks(self.text_embeddings)))


class TowerImages:
    """Images the tower's encoder ran on, per call (its patch embeddings see each image once per pass)."""

    def __init__(self, model):
        self.calls: list[int] = []
        self.handle = vision_tower(model).embeddings.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        self.calls.append(int(pixels.shape[0]))

    def remove(self) -> None:
        self.handle.remove()
