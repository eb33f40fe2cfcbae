"""Throughput in the training log: non-pad tokens per second and, on a known CUDA GPU, MFU.

`attach_throughput(trainer)` adds a `ThroughputCallback` that counts, with forward hooks and no
extra device sync, what the model really computed while training:

- LM tokens: non-pad positions entering the text model (its 2-D attention mask summed; image tokens
  count, they are LM positions like any other),
- vision patches: patches the vision encoder produced (tiles × patches per tile, padding tiles the
  model drops are not run and not counted),
- connector tokens: image tokens the connector produced.

Every log then carries, over the steps since the previous log,

    train_tokens_per_second = LM tokens / seconds           (× processes in a multi-process run)
    train_mfu               = model FLOPs / (seconds × peak FLOP/s of the device)   (CUDA, known peak only)

and the final log (the one with `train_runtime`) the same two over the whole run. transformers'
own `train_tokens_per_second` (logged when `include_num_input_tokens_seen` is set) is an average since
the start of training; it is replaced by the windowed value in the step logs.

Model FLOPs — the "4N rule for frozen weights" (MFU, not HFU: activation-checkpoint recomputation
and attention-score FLOPs are not counted, so the number is a conservative lower bound):

    per unit of work through a component with N_frozen frozen and N_train trainable weights
        2·N                               if backprop never reaches it (the frozen vision tower),
        4·N_frozen + 6·N_train            otherwise (forward 2N, input gradient 2N, and for
                                          trainable weights the weight gradient 2N more)

    model FLOPs = vision_patches × rate(vision) + connector_tokens × rate(connector) + lm_tokens × rate(LM)

Backprop reaches a component when it or anything upstream of it (vision → connector → LM) has a
trainable weight. N counts the weights of matrix multiplies: embedding lookups (token and vision
position embeddings) are excluded, `lm_head` is included, a 4-bit weight counts the values it stores.
Peaks are dense bf16/fp16 tensor-core numbers from the vendors' data sheets (`GPU_PEAK_TFLOPS`);
`VLM_TUNE_PEAK_TFLOPS` overrides them for an unlisted or differently clocked GPU (and enables MFU on
any device, e.g. a CPU whose peak you know).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from vlm_tune.core.modeling import stored_values

# --- device peaks ----------------------------------------------------------------------------
# Dense (no sparsity) bf16 tensor-core TFLOP/s. First match wins, so specific names come first.
GPU_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("RTX A6000", 155.0),
)


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU from its CUDA name (None: unknown); the env var wins."""
    override = os.environ.get("VLM_TUNE_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    if not device_name:
        return None
    for key, tflops in GPU_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


# --- parameter groups ------------------------------------------------------------------------
@dataclass
class Component:
    """Weights of one stage of the model (vision / connector / lm) that do matmul work."""

    name: str
    frozen: int = 0
    trainable: int = 0


def _count(component: Component, module: torch.nn.Module, skip: set[int]) -> None:
    for param in module.parameters():
        if id(param) in skip:
            continue
        skip.add(id(param))
        if param.requires_grad:
            component.trainable += stored_values(param)
        else:
            component.frozen += stored_values(param)


def _lookup_ids(module: torch.nn.Module | None) -> set[int]:
    """Parameters of embedding lookups (no matmul): token and position embeddings."""
    if module is None:
        return set()
    return {id(p) for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}


def vlm_parts(model) -> tuple[torch.nn.Module | None, torch.nn.Module | None, torch.nn.Module, torch.nn.Module | None]:
    """(vision, connector, text model, lm_head) of an Idefics3-style model, peft-wrapped or not.
    A model without these attributes is treated as one text model with no lm_head split out."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    text = getattr(inner, "text_model", None)
    if text is None:
        return None, None, base, None
    return getattr(inner, "vision_model", None), getattr(inner, "connector", None), text, getattr(base, "lm_head", None)


def components(model) -> dict[str, Component]:
    """Frozen / trainable matmul weights of the vision tower, the connector and the LM (+ lm_head)."""
    vision, connector, text, lm_head = vlm_parts(model)
    skip = _lookup_ids(vision) | _lookup_ids(text)
    if lm_head is not None:  # a tied lm_head is a matmul even though its weight is the embedding table
        skip -= {id(p) for p in lm_head.parameters()}
    out = {name: Component(name) for name in ("vision", "connector", "lm")}
    if lm_head is not None:
        _count(out["lm"], lm_head, skip)
    for name, module in (("vision", vision), ("connector", connector), ("lm", text)):
        if module is not None:
            _count(out[name], module, skip)
    return out


# --- FLOPs -----------------------------------------------------------------------------------
def flops_per_unit(parts: dict[str, Component]) -> dict[str, float]:
    """FLOPs per vision patch, connector token and LM token (the 4N rule, see the module docstring)."""
    rates, backprop = {}, False
    for name in ("vision", "connector", "lm"):  # data flows in this order; gradients flow back to the first trainable
        part = parts[name]
        backprop = backprop or part.trainable > 0
        if backprop:
            rates[name] = 4.0 * part.frozen + 6.0 * part.trainable
        else:
            rates[name] = 2.0 * (part.frozen + part.trainable)
    return rates


def model_flops(rates: dict[str, float], vision_patches: float, connector_tokens: float, lm_tokens: float) -> float:
    return rates["vision"] * vision_patches + rates["connector"] * connector_tokens + rates["lm"] * lm_tokens


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation as a fraction (0.25 = 25 %), None without a known peak."""
    if not peak or seconds <= 0:
        return None
    return flops / (seconds * peak)


# --- counting hooks --------------------------------------------------------------------------
class WorkCounter:
    """Forward hooks that add up LM tokens, vision patches and connector tokens while training.
    LM tokens stay a device tensor (no host sync per step); read them with `lm_tokens()`."""

    def __init__(self, model):
        self.model = model
        self.patches = 0
        self.connector_tokens = 0
        self._tokens: torch.Tensor | int = 0
        vision, connector, text, _ = vlm_parts(model)
        self.handles = [text.register_forward_pre_hook(self._count_lm, with_kwargs=True)]
        if vision is not None:
            self.handles.append(vision.register_forward_hook(self._count_patches))
        if connector is not None:
            self.handles.append(connector.register_forward_hook(self._count_connector))

    def _training(self) -> bool:
        return self.model.training and torch.is_grad_enabled()

    def _count_lm(self, module, args, kwargs):
        if not self._training():
            return
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self._tokens = self._tokens + mask.sum()
            return
        first = kwargs.get("inputs_embeds", kwargs.get("input_ids", args[0] if args else None))
        if isinstance(first, torch.Tensor):
            self._tokens = self._tokens + first.shape[0] * first.shape[1]

    def _count_patches(self, module, args, output):
        hidden = getattr(output, "last_hidden_state", output[0] if isinstance(output, tuple) else output)
        if self._training() and isinstance(hidden, torch.Tensor):
            self.patches += hidden.shape[0] * hidden.shape[1]

    def _count_connector(self, module, args, output):
        if self._training() and isinstance(output, torch.Tensor):
            self.connector_tokens += output.shape[0] * output.shape[1]

    def lm_tokens(self) -> int:
        return int(self._tokens.item()) if isinstance(self._tokens, torch.Tensor) else int(self._tokens)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# --- callback --------------------------------------------------------------------------------
class ThroughputCallback(TrainerCallback):
    """Adds `train_tokens_per_second` (and `train_mfu` on a known CUDA GPU) to every training log."""

    def __init__(self, model, peak: float | None = None):
        self.counter = WorkCounter(model)
        self.model = model
        self.peak = peak
        self.rates: dict[str, float] | None = None
        self.started = self.window_start = None
        self.window_work = (0, 0, 0)

    def _work(self) -> tuple[int, int, int]:
        return self.counter.lm_tokens(), self.counter.patches, self.counter.connector_tokens

    def on_train_begin(self, args, state, control, **kwargs):
        # Counted here, after peft and our fp32 cast: trainable vs frozen is final.
        self.rates = flops_per_unit(components(self.model))
        if self.peak is None:  # a CUDA device's data-sheet peak, or VLM_TUNE_PEAK_TFLOPS (any device)
            cuda = torch.cuda.is_available() and args.device.type == "cuda"
            self.peak = peak_flops(torch.cuda.get_device_name(args.device) if cuda else None)
        self.started = self.window_start = time.perf_counter()
        self.window_work = self._work()

    def _metrics(self, work: tuple[int, int, int], since: tuple[int, int, int], seconds: float,
                 processes: int) -> dict[str, float]:
        tokens, patches, connector = (now - before for now, before in zip(work, since))
        # Each process counts its own batches (no collective call in a callback: a log made on one rank
        # only would hang); ranks train equal numbers of rows, so × processes estimates the total.
        metrics = {"train_tokens_per_second": round(processes * tokens / seconds, 3)}
        value = mfu(model_flops(self.rates, patches, connector, tokens), seconds, self.peak)
        if value is not None:
            metrics["train_mfu"] = round(value, 4)
        return metrics

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.started is None:
            return
        now, work = time.perf_counter(), self._work()
        if "train_runtime" in logs:  # the final summary: whole-run averages over the Trainer's own runtime
            extra = self._metrics(work, (0, 0, 0), max(float(logs["train_runtime"]), 1e-9), args.world_size)
        elif work[0] > self.window_work[0]:
            extra = self._metrics(work, self.window_work, max(now - self.window_start, 1e-9), args.world_size)
        else:  # an eval log, or no training step since the last log
            return
        self.window_start, self.window_work = now, work
        logs.update(extra)
        # The Trainer appended a copy of this log to the history before calling the callbacks.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_train_end(self, args, state, control, **kwargs):
        self.counter.remove()


def attach_throughput(trainer, peak: float | None = None) -> ThroughputCallback:
    """Add the callback first in the trainer's list, so loggers (W&B, TensorBoard, the console)
    that run after it see the new keys."""
    callback = ThroughputCallback(trainer.model, peak)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
