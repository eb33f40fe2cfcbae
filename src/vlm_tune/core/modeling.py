"""Load a SmolVLM-style model + processor for training: dtype per machine, 4-bit NF4, LoRA scopes.

Vision-tower parameter names (q_proj, …) overlap with the text model's, so LoRA targets are built as
a regex anchored on the module path of each scope: a scope never reaches the vision tower by accident.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import TrainerCallback
from trl import ModelConfig, get_peft_config, get_quantization_config

from vlm_tune.core.errors import UserError
from vlm_tune.core.fingerprint import check_base
from vlm_tune.core.hub import hub_error, is_hub_id, offline_unless_reachable

# --- LoRA scopes -----------------------------------------------------------------------------
# Module paths of Idefics3ForConditionalGeneration (SmolVLM) and of its subclass
# SmolVLMForConditionalGeneration (SmolVLM2): model.text_model / connector / vision_model.
TEXT_LINEAR = r"model\.text_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
CONNECTOR_LINEAR = r"model\.connector\.modality_projection\.proj"
VISION_LINEAR = r"model\.vision_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc(1|2))"
SCOPE_PATTERNS = {
    "lm": [TEXT_LINEAR],
    "lm+connector": [TEXT_LINEAR, CONNECTOR_LINEAR],
    "all": [TEXT_LINEAR, CONNECTOR_LINEAR, VISION_LINEAR],
}


def lora_target_regex(scope: str, names: list[str] | None = None) -> str:
    """Regex (peft full-match) of the Linear layers LoRA adapts; `names` keeps only those leaf names."""
    scope_regex = "|".join(f"({p})" for p in SCOPE_PATTERNS[scope])
    if not names or names == ["all-linear"]:
        return f"^({scope_regex})$"
    leaf = "|".join(re.escape(n) for n in names)
    return f"^(?=.*\\.({leaf})$)({scope_regex})$"


def build_lora_config(model_args: ModelConfig, scope: str) -> LoraConfig | None:
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        peft_config.target_modules = lora_target_regex(scope, model_args.lora_target_modules)
    return peft_config


# --- machine checks --------------------------------------------------------------------------
def check_machine(resolved: dict, model_args: ModelConfig) -> None:
    """Fail early, in one line, when the recipe (resolved: what it asked for) needs what this machine lacks."""
    cuda = torch.cuda.is_available()
    if resolved.get("fp16") and not cuda:
        raise UserError("fp16: true needs a CUDA GPU and this machine has none; pass --fp16 false (CPU trains in fp32)")
    if resolved.get("bf16") and not (cuda and torch.cuda.is_bf16_supported()):
        where = "this GPU does not support bf16" if cuda else "this machine has no CUDA GPU"
        raise UserError(f"bf16: true but {where}; pass --bf16 false (and fp16 on older GPUs)")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        flag = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
        raise UserError(f"{flag}: true needs bitsandbytes (pip install bitsandbytes), or set {flag}: false")


def resolve_dtype(model_args: ModelConfig, bf16_gpu: bool | None = None) -> torch.dtype:
    """bf16 on a CUDA GPU that has it, fp32 on CPU, unless the recipe names a dtype. `bf16_gpu` answers
    "a bf16 GPU?" for a machine other than this one (`vlm-tune plan --target`); None: this machine."""
    if model_args.dtype in (None, "auto"):
        if bf16_gpu is None:
            bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_gpu else torch.float32
    return getattr(torch, str(model_args.dtype).removeprefix("torch."))


# --- multi-process placement -----------------------------------------------------------------
def sharding_backend() -> str | None:
    """'fsdp' or 'deepspeed' when `accelerate launch` started this process with a sharding config
    (recipes/accelerate/fsdp_qlora.yaml, zero3.yaml), else None (one process, or DDP)."""
    for backend, variable in (("fsdp", "ACCELERATE_USE_FSDP"), ("deepspeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(variable, "false").lower() in ("1", "true", "yes"):
            return backend
    return None


def match_quant_storage(model_args: ModelConfig, dtype: torch.dtype, backend: str) -> None:
    """FSDP and ZeRO-3 shard only float tensors, one dtype per flat parameter, so 4-bit weights must be
    packed in the model's dtype (bitsandbytes' `quant_storage`; uint8 by default). Unset: we set it."""
    wanted = str(dtype).removeprefix("torch.")
    if not model_args.bnb_4bit_quant_storage:
        model_args.bnb_4bit_quant_storage = wanted
    elif model_args.bnb_4bit_quant_storage != wanted:
        raise UserError(
            f"{backend} with load_in_4bit needs bnb_4bit_quant_storage equal to the model dtype ({wanted}), "
            f"not {model_args.bnb_4bit_quant_storage}; pass --bnb_4bit_quant_storage {wanted}"
        )


# --- load ------------------------------------------------------------------------------------
def _hub_error(name: str, exc: Exception) -> UserError:
    return hub_error(f"'{name}'", exc, "folder",
                     f"run `hf download {name} --local-dir DIR` and set model_name_or_path: DIR")


def set_image_budget(processor, image_longest_edge: int | None = None, do_image_splitting: bool | None = None):
    """The recipe's image budget on a processor: longest edge in px and tiling (None keeps the processor's)."""
    image_processor = processor.image_processor
    if image_longest_edge is not None:
        image_processor.size = {"longest_edge": image_longest_edge}
    if do_image_splitting is not None:
        image_processor.do_image_splitting = do_image_splitting
    return processor


def load_processor(
    model_args: ModelConfig,
    trust_remote_code: bool = False,
    image_longest_edge: int | None = None,
    do_image_splitting: bool | None = None,
):
    """The model's processor with the recipe's image budget — the one way the project loads a processor
    (train, eval, caption, plan, export): `AutoProcessor`, or for SmolVLM2 on a machine without
    torchvision the same processor built by `core.smolvlm2`."""
    from transformers import AutoProcessor

    name = model_args.model_name_or_path
    if not name:
        raise UserError("model_name_or_path is not set in the recipe")
    local = not is_hub_id(name) or os.path.exists(name)
    if local and not os.path.isdir(os.path.expanduser(name)):
        raise UserError(f"model path not found: {name}")
    if not local:
        offline_unless_reachable()
    try:
        processor = AutoProcessor.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise _hub_error(name, exc) from None
    except (ImportError, AttributeError) as exc:
        # SmolVLM2 without torchvision (our CPU machines): AutoProcessor cannot build its video processor
        # even for images; core.smolvlm2 builds the same processor with a video stand-in. Else: re-raised.
        from vlm_tune.core.smolvlm2 import load_without_torchvision

        processor = load_without_torchvision(name, model_args.model_revision, exc)
    return set_image_budget(processor, image_longest_edge, do_image_splitting)


def load_model(model_args: ModelConfig, trust_remote_code: bool = False, train_vision_tower: bool = False):
    from accelerate import PartialState
    from transformers import AutoModelForImageTextToText

    dtype = resolve_dtype(model_args)
    model_args.dtype = str(dtype).removeprefix("torch.")  # get_quantization_config reads the compute dtype here
    sharded = sharding_backend()
    if sharded and model_args.load_in_4bit:
        match_quant_storage(model_args, dtype, sharded)
    quantization_config = get_quantization_config(model_args)
    # DDP: bitsandbytes needs each process's 4-bit model on its own GPU. FSDP / ZeRO-3 place the shards
    # themselves and refuse a device_map.
    device_map = {"": PartialState().local_process_index} if torch.cuda.is_available() and not sharded else None
    # No quantization asked: leave the key out — an explicit quantization_config=None makes transformers
    # drop the config of a checkpoint that is already quantized (bitsandbytes) and its load fails.
    quantization = {"quantization_config": quantization_config} if quantization_config is not None else {}
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=trust_remote_code,
            **quantization,
        )
    except OSError as exc:
        raise _hub_error(model_args.model_name_or_path, exc) from None
    if device_map is None:
        keep_4bit_trainable_on_cpu(model)
    if not model_args.use_peft and not train_vision_tower:
        # Full fine-tuning: the frozen vision encoder is the usual choice (and most of the compute).
        for param in model.model.vision_model.parameters():
            param.requires_grad_(False)
    return model


def load_for_inference(
    model_args: ModelConfig,
    trust_remote_code: bool = False,
    image_longest_edge: int | None = None,
    do_image_splitting: bool | None = None,
    adapter: str | None = None,
    dequantize_on_cpu: bool = True,
    force_base: bool = False,
    base_flag: str = "--model_name_or_path",
):
    """(model, processor) for generation (eval, caption): the base as trained (4-bit or not) + a LoRA adapter.

    The adapter must have been trained on this base (`core.fingerprint.check_base`: another architecture
    is refused, other weights too unless `force_base`); `base_flag` is how the command names the base.

    On CPU a 4-bit base is dequantized to its compute dtype before the adapter goes on: the weights are
    the very values the adapter was trained against (NF4 matmuls dequantize them anyway), but
    bitsandbytes' CPU path pays that on every token — plain Linear layers caption 1.7x faster one image
    at a time (4 % at batches of 16) on the tiny model, identical greedy outputs (docs/benchmarks.md).
    Costs memory: 4 bytes/param in fp32.
    """
    base = model_args.model_name_or_path
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"no LoRA adapter in {adapter} (adapter_config.json missing)")
    processor = load_processor(model_args, trust_remote_code, image_longest_edge, do_image_splitting)
    # the base checked before it loads when its files are here; a hub id not downloaded yet: once loaded
    checked = not adapter or check_base(adapter, base, model_args.model_revision, force_base, base_flag)
    model = load_model(model_args, trust_remote_code)
    if not checked:
        check_base(adapter, base, model_args.model_revision, force_base, base_flag, required=True)
    if dequantize_on_cpu and model_args.load_in_4bit and not torch.cuda.is_available():
        model = model.dequantize()
    if adapter:
        model = attach_adapter(model, adapter, base)
    model.eval()
    return model, processor


def attach_adapter(model, adapter: str | os.PathLike, base: str, is_trainable: bool = False):
    """peft's PeftModel on `model`; an adapter of another architecture (weights of other shapes) is one line
    naming the adapter and the base, not peft's page of size mismatches."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=is_trainable)
    except RuntimeError as exc:
        mismatches = re.findall(r"size mismatch for (\S+?): copying a param with shape (.+?) from checkpoint, "
                                r"the shape in current model is (.+?)\.?$", str(exc), flags=re.MULTILINE)
        if not mismatches:
            raise
        name, saved, here = mismatches[0]
        name = name.removeprefix("base_model.model.")
        raise UserError(f"adapter {adapter} does not fit the base {base}: {len(mismatches)} weight(s) of another "
                        f"shape (e.g. {name}: {_shape(saved)} in the adapter, {_shape(here)} here): it was trained "
                        f"on another architecture; use the base it was trained on") from None


def _shape(text: str) -> str:
    return text.replace("torch.Size(", "").rstrip(")")


def keep_4bit_trainable_on_cpu(model) -> None:
    """bitsandbytes repacks an NF4 layer into an inference-only CPU layout the first time it runs in
    eval mode; backprop then goes through a kernel with no autograd (silently wrong gradients). Any
    eval or generation before or between training steps (DPO's 'before' score, eval_steps) would
    trigger it, so the repacking is switched off."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def drop_frozen_vision_input_grads(model) -> int:
    """Stop autograd from recording the frozen vision tower; returns the number of hooks removed.

    With gradient checkpointing (or k-bit prep), transformers' `enable_input_require_grads` hooks the
    input embeddings of *every* sub-model — SigLIP's patch embeddings included — so the vision
    encoder's activations are kept and backpropagated through although none of its weights train
    (most of the kept activations of SmolVLM-256M at ~1k image tokens). The connector still gets its
    gradients: they need only the encoder's output, not a gradient through it."""
    from transformers import PreTrainedModel

    removed = 0
    for module in model.modules():
        if not (isinstance(module, PreTrainedModel) and "vision" in type(module).__name__.lower()):
            continue
        if any(param.requires_grad for param in module.parameters()):
            continue  # lora_scope: all / train_vision_tower: the grads are needed
        embeddings = module.get_input_embeddings()
        for key, hook in list(embeddings._forward_hooks.items()):
            if getattr(hook, "__name__", "") == "make_inputs_require_grads":
                del embeddings._forward_hooks[key]
                removed += 1
    return removed


class FrozenVisionNoGrad(TrainerCallback):
    """Runs `drop_frozen_vision_input_grads` once training has enabled gradient checkpointing."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            drop_frozen_vision_input_grads(model)


def keep_adapters_fp32(model) -> None:
    """TRL casts QLoRA adapters to bf16; fp32 master weights keep small Adam updates from being rounded away."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


# --- parameter counts ------------------------------------------------------------------------
def is_4bit(param: torch.Tensor) -> bool:
    """A bitsandbytes 4-bit weight (Params4bit), without importing bitsandbytes."""
    return param.__class__.__name__ == "Params4bit"


def stored_values(param: torch.Tensor) -> int:
    """Number of weight values a parameter holds: a 4-bit weight packs two per byte, whatever the storage
    dtype (uint8, or bf16 for FSDP-QLoRA)."""
    return param.numel() * 2 * param.element_size() if is_4bit(param) else param.numel()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), 4-bit weights counted as the values they store (`stored_values`)."""
    trainable = total = 0
    for param in model.parameters():
        n = stored_values(param)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total
