"""Benchmark captioning throughput: `vlm-tune caption`'s batched generation vs a naive loop.

Same model, same images, same prompt and `max_new_tokens`, in one process: first a naive loop that
calls `model.generate` once per image (what a quick script does), then `generate_answers` with
left-padded batches (what `vlm-tune caption --batch_size N` does). Images/s of each, the speed-up,
and how many captions agree word for word (left padding may change a token at a tie).

Usage:
    python -m bench.bench_caption [--model artifacts/tiny-smolvlm] [--adapter runs/tiny-sft-captioner] \\
        [--images DIR] [--n 64] [--batch-size 16] [--max-new-tokens 48] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from vlm_tune.core.prompts import DEFAULT_PROMPTS
from vlm_tune.core.generation import generate_answers, prompt_text
from vlm_tune.core.images import find_images, open_image


def sample_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Coloured shapes on coloured backgrounds (stand-ins when no folder is given)."""
    rng = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(n):
        colors = [tuple(int(v) for v in torch.randint(0, 256, (3,), generator=rng)) for _ in range(2)]
        image = Image.new("RGB", (128, 128), colors[0])
        x, y = (int(v) for v in torch.randint(10, 60, (2,), generator=rng))
        ImageDraw.Draw(image).ellipse((x, y, x + 50, y + 50), fill=colors[1])
        images.append(image)
    return images


@torch.no_grad()
def naive_loop(model, processor, images, prompt, max_new_tokens) -> list[str]:
    device = next(model.parameters()).device
    answers = []
    for image in images:
        inputs = processor(images=[[image]], text=[prompt_text(processor, prompt)], return_tensors="pt").to(device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                pad_token_id=processor.tokenizer.pad_token_id)
        answers.append(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_caption")
    parser.add_argument("--model", default="artifacts/tiny-smolvlm")
    parser.add_argument("--adapter", default="runs/tiny-sft-captioner", help="used when the folder has an adapter")
    parser.add_argument("--images", help="image folder (default: n generated shape images)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--keep-4bit", action="store_true", help="CPU: keep bitsandbytes' 4-bit layers (vlm-tune caption --keep-4bit)")
    args = parser.parse_args(argv)

    from vlm_tune.caption.captioner import load_captioner, training_settings

    adapter = args.adapter if args.adapter and (Path(args.adapter) / "adapter_config.json").is_file() else None
    if not Path(args.model).is_dir():
        from vlm_tune.core.tiny_model import make_tiny_model

        make_tiny_model(args.model, seed=0)
    caption_args = argparse.Namespace(model=args.model, adapter=adapter, load_in_4bit=None, dtype=None,
                                      do_image_splitting=None, image_longest_edge=None, trust_remote_code=False,
                                      keep_4bit=args.keep_4bit)
    model, processor = load_captioner(caption_args, training_settings(adapter))
    if args.images:
        found, _ = find_images(args.images)
        images = [im for im, _ in (open_image(Path(args.images) / rel) for rel in found[: args.n]) if im is not None]
    else:
        images = sample_images(args.n)
    prompt = DEFAULT_PROMPTS["caption"]

    naive_loop(model, processor, images[:2], prompt, args.max_new_tokens)  # warm-up (allocations, kernels)
    started = time.perf_counter()
    naive = naive_loop(model, processor, images, prompt, args.max_new_tokens)
    naive_seconds = time.perf_counter() - started
    started = time.perf_counter()
    batched = generate_answers(model, processor, images, [prompt] * len(images), batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, show_progress=False)
    batched_seconds = time.perf_counter() - started

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": args.model, "adapter": adapter, "images": len(images), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "naive_images_per_s": round(len(images) / naive_seconds, 2),
        "batched_images_per_s": round(len(images) / batched_seconds, 2),
        "speedup": round(naive_seconds / batched_seconds, 2),
        "same_caption": round(sum(a == b for a, b in zip(naive, batched)) / len(images), 3),
        "mean_words": round(sum(len(c.split()) for c in batched) / len(images), 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
