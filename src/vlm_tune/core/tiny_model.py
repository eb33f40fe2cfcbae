"""Build a tiny SmolVLM-architecture model + processor as an ordinary HF folder.

The project's embedded default and test fixture: no hub is reachable here, so we build the same
architecture as HuggingFaceTB/SmolVLM-* at toy size, with random weights and a tokenizer trained
locally, and save it so that `AutoProcessor` / `AutoModelForImageTextToText` load it like a real
checkpoint. Deterministic for a seed. Two architectures:

- `idefics3` (default): SmolVLM v1 — `Idefics3ForConditionalGeneration` + `Idefics3Processor`;
- `smolvlm2`: SmolVLM2 — `model_type: smolvlm`, `SmolVLMForConditionalGeneration` + `SmolVLMProcessor`
  (with a video-processor config; without torchvision it loads through `core.modeling.load_processor`).
  Same module paths, sizes, tokenizer and image geometry, SmolVLM2's chat template.

    vlm-tune make-tiny-model --output artifacts/tiny-smolvlm [--arch idefics3|smolvlm2] [--seed 0]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError

# --- sizes -----------------------------------------------------------------------------------
# Every Linear width is a multiple of 64: bitsandbytes' NF4 kernels on CPU break for layers
# narrower than one 64-element quant block, and the tiny model must run in 4-bit like the real ones.
TILE_SIZE = 64  # vision encoder input (SmolVLM-256M: 512); one tile → (64/8)² / 2² = 16 image tokens
PATCH_SIZE = 8
SCALE_FACTOR = 2  # pixel-shuffle factor of the connector (SmolVLM-256M: 4)
IMAGE_SEQ_LEN = (TILE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
LONGEST_EDGE = 2 * TILE_SIZE  # resize target before splitting: ≤ 2×2 tiles + 1 global = ≤ 80 tokens
VOCAB_SIZE = 1024
LM_HEAD_INIT_STD = 0.1
POSITION_INIT_STD = 0.2

VISION_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=TILE_SIZE,
    patch_size=PATCH_SIZE,
)
TEXT_CONFIG = dict(
    model_type="llama",
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)

# SmolVLM-Instruct's own chat template, so prompts look exactly like the real models' prompts.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# SmolVLM2's default chat template (transformers' SmolVLMProcessor DEFAULT_CHAT_TEMPLATE): v1's plus a
# video branch; identical text for image and text messages.
SMOLVLM2_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{ '<image>' }}{% endif %}", "{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
)

# Same special tokens as SmolVLM: bos <|im_start|>, eos <end_of_utterance>, pad <|im_end|>.
SPECIAL_TOKENS = (
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]
    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
)

# --- tokenizer corpus ------------------------------------------------------------------------
# Words our synthetic tasks use (charts, scenes, captions) plus digits and plain English, so the
# byte-level BPE learns sensible merges; any other text still encodes byte by byte.
_CORPUS_WORDS = """
what which how many is are the of a an in on at to for and or by with than between value values
largest smallest highest lowest biggest maximum minimum difference total sum count number bars bar
slices slice points point lines line chart charts pie horizontal vertical plot graph category
categories label labels colour color red blue green orange purple yellow brown pink gray grey black
white cyan teal olive navy increasing decreasing trend overall go up down does do series year
apple banana cherry grape lemon mango peach pear plum kiwi cat dog fox owl bear lion wolf deer
circle square triangle star shape shapes left right top bottom center middle background small large
style watercolor sketch photo anime painting ghibli a photo of an image showing picture scene
answer question user assistant system you helpful describe caption tags yes no true false
"""


def _tokenizer_corpus() -> list[str]:
    words = _CORPUS_WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() + "?" for w in words]
    lines += [" ".join(str(n) for n in range(start, start + 10)) for start in range(0, 1000, 10)]
    lines += [f"{n}%" for n in range(0, 101)] + [f"{n / 10:.1f}" for n in range(0, 100)]
    return lines * 3


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        model_max_length=2048,
    )


# --- processor -------------------------------------------------------------------------------
ARCHS = ("idefics3", "smolvlm2")
# SmolVLM's splitting logic at toy size: resize the longest edge to LONGEST_EDGE, cut it into
# TILE_SIZE tiles (+ one global tile).
IMAGE_PROCESSING = dict(
    size={"longest_edge": LONGEST_EDGE},
    max_image_size={"longest_edge": TILE_SIZE},
    do_image_splitting=True,
)
# SmolVLM2's video settings at toy size, in the layout of SmolVLM2's configs (video_sampling: frames are
# sampled at `fps` up to `max_frames`, each resized to one tile). Only a machine with torchvision uses them.
VIDEO_PROCESSING = dict(
    video_processor_type="SmolVLMVideoProcessor",
    do_convert_rgb=True, do_resize=True, do_rescale=True, do_normalize=True, do_pad=True,
    do_sample_frames=False, resample=1, rescale_factor=1 / 255,
    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    size={"longest_edge": TILE_SIZE}, max_image_size={"longest_edge": TILE_SIZE},
    video_sampling={"fps": 1, "max_frames": 64, "video_size": {"longest_edge": TILE_SIZE}},
)


def build_processor(arch: str = "idefics3"):
    # PIL backend image processors: there is no CPU torchvision build here.
    if arch == "smolvlm2":
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        from vlm_tune.core.smolvlm2 import build_processor as build_smolvlm2_processor

        return build_smolvlm2_processor(SmolVLMImageProcessorPil(**IMAGE_PROCESSING), build_tokenizer(),
                                        VIDEO_PROCESSING, IMAGE_SEQ_LEN, SMOLVLM2_CHAT_TEMPLATE)
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    return Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(**IMAGE_PROCESSING),
        tokenizer=build_tokenizer(),
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )


# --- model -----------------------------------------------------------------------------------
# (config class, model class) per architecture; SmolVLM's are subclasses of Idefics3's.
MODEL_CLASSES = {
    "idefics3": ("Idefics3Config", "Idefics3ForConditionalGeneration"),
    "smolvlm2": ("SmolVLMConfig", "SmolVLMForConditionalGeneration"),
}


def build_model(processor, seed: int, arch: str = "idefics3"):
    import torch
    import transformers
    from transformers import GenerationConfig

    config_class, model_class = (getattr(transformers, name) for name in MODEL_CLASSES[arch])
    tokenizer = processor.tokenizer
    vocab_size = (len(tokenizer) + 63) // 64 * 64  # embedding rows padded to a multiple of 64
    config = config_class(
        vision_config=VISION_CONFIG,
        text_config=dict(
            TEXT_CONFIG,
            vocab_size=vocab_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    # A frozen lm_head at the default init (std 0.02) caps logits near ±2.5 at this width, so even a
    # perfect adapter could not get the loss under ~4. A wider init lets LoRA reach confident answers.
    torch.nn.init.normal_(model.lm_head.weight, std=LM_HEAD_INIT_STD)
    # At the default init a patch's position embedding is ~10× weaker than its pixel content, so
    # image tokens barely know where they are and layout questions (trend, which bar) stay
    # unlearnable; trained SigLIP towers carry strong position signal, and so does this one.
    torch.nn.init.normal_(model.model.vision_model.embeddings.position_embedding.weight, std=POSITION_INIT_STD)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=16,
    )
    return model


# --- save ------------------------------------------------------------------------------------
def make_tiny_model(output: str | os.PathLike, seed: int = 0, overwrite: bool = False,
                    arch: str = "idefics3") -> Path:
    """Build and save the tiny model + processor; write to a temp dir, then rename (no half folder)."""
    output = Path(output)
    if arch not in ARCHS:
        raise UserError(f"unknown tiny-model arch '{arch}'; choose one of {', '.join(ARCHS)}")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise UserError(f"{output} exists and is not empty; pass --overwrite to replace it")
    processor = build_processor(arch)
    model = build_model(processor, seed, arch)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = ArgParser(prog="vlm-tune make-tiny-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder to write (HF format)")
    parser.add_argument("--arch", choices=ARCHS, default="idefics3",
                        help="idefics3: SmolVLM v1 (default); smolvlm2: SmolVLM2 (model_type smolvlm)")
    parser.add_argument("--seed", type=int, default=0, help="weight-init seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    path = make_tiny_model(args.output, seed=args.seed, overwrite=args.overwrite, arch=args.arch)
    print(f"tiny {'SmolVLM2' if args.arch == 'smolvlm2' else 'SmolVLM'}-architecture model written to {path}")
    return 0
