"""`vlm-tune candidates`: several distinct captions per image from the (fine-tuned) captioner, written as a
rating task file for `vlm-tune rate serve` — the first step of teaching a captioner a team's taste.

    vlm-tune candidates IMAGES_DIR --adapter runs/my-captioner --tasks_output team/tasks.jsonl \\
        [--samples 4] [--temperature 1.0] [--top_p 0.95] [--prompt_variants "Describe it briefly." ...]

Per image: the caption already on disk (kohya sidecar or diffusers metadata.jsonl, each line; the trigger
word stripped), the greedy caption (what `vlm-tune caption` writes) and `--samples` sampled captions, for
the rating prompt and for each `--prompt_variants` prompt (other ways of asking, to draw other styles
out of the model). Duplicates are dropped (same text up to case and spaces); an image left with fewer
than two distinct captions has nothing to compare and is left out (listed). The task file's items carry
the rating prompt — the question DPO later teaches the answer to — whatever prompt drew a candidate.

Where every candidate came from (on disk, greedy or sampled; prompt, temperature, top-p, seed, how many
samples gave it) goes to TASKS.sources.jsonl beside the task file, never shown to raters. Caption files
are never written or changed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vlm_tune.caption.captioner import (_bool, add_model_loading_args, clean_caption, load_captioner,
                                         training_settings)
from vlm_tune.caption.formats import METADATA, caption_lines, read_metadata, read_sidecar, sidecar_of
from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError
from vlm_tune.core.images import MAX_PIXELS, find_images, open_image
from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.prompts import DEFAULT_PROMPTS

# The rating page shows at most this many candidates per item (vlm_tune.rate.tasks.MAX_RESPONSES).
MAX_CANDIDATES = 9
SHOWN_LEFT_OUT = 5  # images named when some are left out (all of them are in no task row)
CHUNK_IMAGES = 64  # images decoded and captioned at a time: a real dataset does not fit in memory at once


# --- arguments -------------------------------------------------------------------------------
def parse_args(argv: list[str]):
    p = ArgParser(prog="vlm-tune candidates",
                  description="Sample distinct captions per image into a rating task file (vlm-tune rate serve).")
    p.add_argument("images_dir", help="image folder (searched recursively); its captions are read, never written")
    p.add_argument("--tasks_output", required=True, type=Path, help="task file to write (JSONL)")
    p.add_argument("--model", help="base model folder or hub id (default: the model in ADAPTER/recipe.yaml)")
    p.add_argument("--adapter", help="LoRA adapter folder of the captioner")
    p.add_argument("--samples", type=int, default=4, help="sampled captions per image and prompt (default %(default)s)")
    p.add_argument("--greedy", type=_bool, default=True, help="also the greedy caption per prompt (default %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default %(default)s)")
    p.add_argument("--top_p", type=float, default=0.95, help="nucleus sampling (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    p.add_argument("--prompt", default=DEFAULT_PROMPTS["caption"], help="the rating prompt: the question raters "
                   "and DPO see (default: the captioner's sentence prompt)")
    p.add_argument("--prompt_variants", nargs="*", default=[], help="more prompts to draw candidates with")
    p.add_argument("--existing", type=_bool, default=True, help="include the caption on disk (default %(default)s)")
    p.add_argument("--caption_extension", default=".txt", help="kohya sidecar extension to read (default .txt)")
    p.add_argument("--caption_column", default="text", help="metadata.jsonl caption column to read")
    p.add_argument("--trigger", help="trigger word to strip from captions on disk (it is not part of the answer)")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--batch_size", type=int, default=16, help="sequences per generate call")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing task file")
    add_model_loading_args(p)
    args = p.parse_args(argv)
    if not args.caption_extension.startswith("."):
        args.caption_extension = "." + args.caption_extension
    for name in ("samples", "max_new_tokens", "batch_size"):
        if getattr(args, name) < (0 if name == "samples" else 1):
            raise UserError(f"--{name} must be >= {0 if name == 'samples' else 1}")
    if args.samples and not (args.temperature > 0 and 0 < args.top_p <= 1):
        raise UserError("--temperature must be > 0 and --top_p in (0, 1]")
    if not args.samples and not args.greedy:
        raise UserError("nothing to generate: --samples 0 and --greedy false")
    return args


# --- candidates ------------------------------------------------------------------------------
@dataclass
class Candidates:
    """One image's distinct candidates in the order found, each with where it came from."""

    texts: list[str] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, text: str, source: dict) -> None:
        if not text:
            return
        key = " ".join(text.lower().split())  # duplicates: same words, whatever the case and spacing
        if key in self._index:
            self.sources[self._index[key]]["count"] += 1
            return
        self._index[key] = len(self.texts)
        self.texts.append(text)
        self.sources.append({**source, "count": 1})


def captions_on_disk(args, root: Path, images: list[str]) -> dict[str, list[str]]:
    """image -> lines of the caption of record (sidecar first, then metadata.jsonl), trigger stripped."""
    rows = {row["file_name"]: row for row in read_metadata(root / METADATA, args.caption_column)}
    found = {}
    for rel in images:
        sidecar = sidecar_of(root, rel, args.caption_extension)
        lines = read_sidecar(sidecar)[0] if sidecar.is_file() else None
        lines = lines or caption_lines((rows.get(rel) or {}).get(args.caption_column))
        if lines:
            found[rel] = [text for text in (clean_caption(line, "caption", None) for line in lines) if text]
    if args.trigger:
        strip = args.trigger.lower()
        found = {rel: [_strip_trigger(t, strip) for t in lines] for rel, lines in found.items()}
    return found


def _strip_trigger(text: str, trigger: str) -> str:
    first, _, rest = text.partition(",")
    return rest.strip() if first.strip().lower() == trigger else text


def generation_plan(args) -> list[dict]:
    """Each way one image is captioned: (prompt, greedy or sampled with settings), in candidate order."""
    plan = []
    for prompt in [args.prompt, *args.prompt_variants]:
        if args.greedy:
            plan.append({"source": "greedy", "prompt": prompt})
        plan += [{"source": "sample", "prompt": prompt, "temperature": args.temperature, "top_p": args.top_p,
                  "seed": args.seed, "sample": k} for k in range(args.samples)]
    return plan


def generate(model, processor, images: list, plan: list[dict], args, system_prompt) -> list[list[str]]:
    """Per image, the cleaned caption of each plan entry; greedy and sampled runs batched separately."""
    from vlm_tune.core.generation import generate_answers

    out: list[list[str]] = [[""] * len(plan) for _ in images]
    for greedy in (True, False):
        steps = [j for j, step in enumerate(plan) if (step["source"] == "greedy") == greedy]
        if not steps:
            continue
        jobs = [(i, j) for i in range(len(images)) for j in steps]
        kwargs = {} if greedy else {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p}
        raw = generate_answers(model, processor, [images[i] for i, _ in jobs], [plan[j]["prompt"] for _, j in jobs],
                               system_prompt, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                               show_progress=False, **kwargs)
        for (i, j), text in zip(jobs, raw):
            out[i][j] = clean_caption(text, "caption", None)
    return out


def generate_all(args, root: Path, names: list[str], trained: dict) -> tuple[list[str], list[list[str]], list]:
    """(usable images, their generated captions, (image, reason) unusable), decoding CHUNK_IMAGES images at a
    time: a real dataset does not fit in memory at once."""
    import torch
    from tqdm.auto import tqdm

    model, processor = load_captioner(args, trained)
    plan = generation_plan(args)
    torch.manual_seed(args.seed)  # sampled candidates are reproducible for a given seed and batch size
    usable, generated, unusable = [], [], []
    bar = tqdm(total=len(names), desc="Candidates", unit="img", dynamic_ncols=True)
    for start in range(0, len(names), CHUNK_IMAGES):
        opened = []
        for rel in names[start : start + CHUNK_IMAGES]:
            image, why = open_image(root / rel, MAX_PIXELS)
            if image is None:
                unusable.append((rel, why))
            else:
                opened.append((rel, image))
        if opened:
            generated += generate(model, processor, [image for _, image in opened], plan, args,
                                  trained.get("system_prompt"))
            usable += [rel for rel, _ in opened]
        bar.update(len(names[start : start + CHUNK_IMAGES]))
    bar.close()
    return usable, generated, unusable


# --- task file -------------------------------------------------------------------------------
def task_rows(args, root: Path, names: list[str], generated: list[list[str]], plan: list[dict],
              on_disk: dict[str, list[str]]) -> tuple[list[dict], list[dict], list[str]]:
    """(task rows, source rows, images left out) in image order; image paths relative to the task file."""
    tasks_dir = args.tasks_output.resolve().parent
    tasks, sources, left_out = [], [], []
    for rel, texts in zip(names, generated):
        found = Candidates()
        for text in on_disk.get(rel, []) if args.existing else []:
            found.add(text, {"source": "on disk"})
        for text, step in zip(texts, plan):
            found.add(text, step)
        if len(found.texts) < 2:
            left_out.append(rel)
            continue
        image = Path(os.path.relpath((root / rel).resolve(), tasks_dir)).as_posix()
        kept = found.texts[:MAX_CANDIDATES]
        tasks.append({"image": image, "prompt": args.prompt, "responses": kept})
        sources.append({"image": image, "prompt": args.prompt,
                        "candidates": [{"text": t, **s} for t, s in zip(kept, found.sources)],
                        "dropped_over_max": len(found.texts) - len(kept)})
    return tasks, sources, left_out


def sources_path(tasks_output: Path) -> Path:
    return tasks_output.with_name(tasks_output.stem + ".sources.jsonl")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# --- command ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    root = Path(args.images_dir)
    if not root.is_dir():
        raise UserError(f"images folder not found: {args.images_dir}")
    if args.tasks_output.exists() and not args.overwrite:
        raise UserError(f"{args.tasks_output} exists; pass --overwrite to replace it")
    names, refused = find_images(root)
    names = names[: args.limit] if args.limit is not None else names
    if not names:
        raise UserError(f"{root}: no images found")
    trained = training_settings(args.adapter)
    usable, generated, unusable = generate_all(args, root, names, trained)
    unusable += refused
    if not usable:
        raise UserError(f"{root}: no usable images ({len(unusable)} could not be opened)")

    plan = generation_plan(args)
    on_disk = captions_on_disk(args, root, usable) if args.existing else {}
    tasks, sources, left_out = task_rows(args, root, usable, generated, plan, on_disk)
    if not tasks:
        raise UserError(f"{root}: no image got two distinct captions; raise --temperature or --samples")
    args.tasks_output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.tasks_output, tasks)
    write_jsonl(sources_path(args.tasks_output), sources)
    sizes = [len(t["responses"]) for t in tasks]
    print(f"wrote {args.tasks_output}: {len(tasks)} item(s), {sum(sizes) / len(sizes):.1f} distinct candidates per "
          f"item ({len(plan)} generated per image, {len(on_disk)} image(s) with a caption on disk); "
          f"sources in {sources_path(args.tasks_output)}")
    if left_out:
        shown = ", ".join(left_out[:SHOWN_LEFT_OUT]) + (", ..." if len(left_out) > SHOWN_LEFT_OUT else "")
        print(f"  left out {len(left_out)} image(s) whose captions were all the same (nothing to compare): {shown}")
    for rel, why in unusable:
        print(f"  skipped {rel}: {why}")
    print(f"next: vlm-tune rate serve {args.tasks_output} --db team.db")
    return 0
