"""The prompts: chat messages of an image question, and the captioner's default prompts."""

from __future__ import annotations

# The prompts the captioner asks by default; data_builders.scenes trains the tiny captioner on exactly these.
DEFAULT_PROMPTS = {
    "caption": "Describe this image in one sentence.",
    "tags": "List comma-separated tags for this image.",
}


def prompt_messages(query: str, system_prompt: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": query}]  # TRL inserts the image placeholder here
