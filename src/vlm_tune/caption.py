"""`vlm-tune caption`: caption a diffusion-LoRA image folder with the (fine-tuned) VLM (work in progress)."""

from __future__ import annotations

# The prompts the captioner asks by default; data_builders.scenes trains the tiny captioner on exactly these.
DEFAULT_PROMPTS = {
    "caption": "Describe this image in one sentence.",
    "tags": "List comma-separated tags for this image.",
}
