"""Batched greedy generation for image + question prompts (left padding, progress bar)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from vlm_tune.core.prompts import prompt_messages


def prompt_text(processor, query: str, system_prompt: str | None = None) -> str:
    """The chat-template prompt the model was trained on, ending with the assistant's turn."""
    messages = prompt_messages(query, system_prompt)
    messages[-1] = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}
    if system_prompt:
        messages[0] = {"role": "system", "content": [{"type": "text", "text": system_prompt}]}
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.no_grad()
def generate_answers(
    model,
    processor,
    images: list,
    queries: list[str],
    system_prompt: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    desc: str = "Generating",
    show_progress: bool = True,
    **generate_kwargs,
) -> list[str]:
    """Greedy answers, one per (image, query); batches are left-padded so generation starts aligned.
    `generate_kwargs` go to `model.generate` (num_beams, repetition_penalty, no_repeat_ngram_size, …)."""
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    starts = range(0, len(queries), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not show_progress):
        batch_queries = queries[start : start + batch_size]
        batch_images = [[image.convert("RGB")] for image in images[start : start + batch_size]]
        texts = [prompt_text(processor, q, system_prompt) for q in batch_queries]
        inputs = processor(images=batch_images, text=texts, padding=True, padding_side="left", return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            **{"do_sample": False, "use_cache": True, **generate_kwargs},  # Trainer turns the KV cache off in config
            pad_token_id=processor.tokenizer.pad_token_id,
            eos_token_id=processor.tokenizer.eos_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += [t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers
