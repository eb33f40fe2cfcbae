"""`vlm-tune caption`: caption a Stable-Diffusion LoRA image folder with the (fine-tuned) VLM.

    vlm-tune caption IMAGES_DIR --adapter runs/tiny-sft-captioner --format both --mode dual --trigger sks
    vlm-tune caption IMAGES_DIR --model HuggingFaceTB/SmolVLM-256M-Instruct --format kohya

find images → read the captions already there → load model → caption in batches → write each batch
(atomically) → QA report. Formats: kohya sd-scripts (a sidecar `<stem><ext>` beside each image, UTF-8,
first line read) and diffusers (`metadata.jsonl` rows `{"file_name", "text"}` at the root). A caption
already present in either format is the caption of record: it is never replaced without
`--overwrite`, and a missing format is filled from it, so both formats always agree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.errors import UserError
from vlm_tune.core.prompts import DEFAULT_PROMPTS
from vlm_tune.core.images import MAX_PIXELS, find_images, open_image, safe_join

MODES = ("caption", "tags", "dual")
FORMATS = ("kohya", "diffusers", "both")
OTHER_CAPTION_EXTENSIONS = (".txt", ".caption")  # kohya's trainer default is .caption, its taggers write .txt
METADATA = "metadata.jsonl"


# --- arguments -------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(message)


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="vlm-tune caption", description="Caption an image folder for kohya sd-scripts and/or diffusers.")
    p.add_argument("images_dir", help="dataset root; images are found recursively (png, jpg, jpeg, webp, bmp)")
    p.add_argument("--model", help="base model folder or hub id (default: the model in ADAPTER/recipe.yaml)")
    p.add_argument("--adapter", help="LoRA adapter folder, e.g. a `vlm-tune sft` run's output_dir")
    p.add_argument("--format", choices=FORMATS, default="kohya", help="kohya sidecars, diffusers metadata.jsonl, or both")
    p.add_argument("--caption-extension", default=".txt",
                   help="kohya sidecar extension (default .txt; pass the same to sd-scripts' --caption_extension)")
    p.add_argument("--caption-column", default="text", help="diffusers caption column (its --caption_column)")
    p.add_argument("--mode", choices=MODES, default="caption",
                   help="caption: one sentence; tags: comma-separated; dual: both (kohya: tags line + sentence line "
                        "for --enable_wildcard; diffusers: a list of two captions, one picked per step)")
    p.add_argument("--trigger", help="trigger word put first in every caption (use keep_tokens=1 in kohya)")
    p.add_argument("--prompt", default=DEFAULT_PROMPTS["caption"], help="question asked for sentence captions")
    p.add_argument("--tags-prompt", default=DEFAULT_PROMPTS["tags"], help="question asked for tags")
    p.add_argument("--system-prompt", help="optional system message (default: the adapter's recipe's)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--num-beams", type=int, default=1, help="1: greedy (fast); >1: beam search")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 discourages repeated tokens")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="forbid repeating any n-gram of this size")
    p.add_argument("--batch-size", type=int, default=8, help="images per generate call (lower on out-of-memory)")
    p.add_argument("--overwrite", action="store_true", help="re-caption images that already have a caption")
    p.add_argument("--strict", action="store_true", help="exit 1 if any image failed or was refused")
    p.add_argument("--report-dir", help="where caption_report.json/.md go (default: IMAGES_DIR)")
    p.add_argument("--limit", type=int, help="caption at most N images this run (a rerun continues)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (decompression bombs)")
    p.add_argument("--load-in-4bit", type=_bool, help="NF4 base weights (default: as the adapter was trained)")
    p.add_argument("--keep-4bit", action="store_true",
                   help="CPU: keep the 4-bit layers (less memory) instead of dequantizing them (faster, same weights)")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), help="compute dtype (auto: bf16 on GPU)")
    p.add_argument("--do-image-splitting", type=_bool, help="split images into tiles (default: as trained)")
    p.add_argument("--image-longest-edge", type=int, help="resize images to this longest edge (default: as trained)")
    p.add_argument("--trust-remote-code", action="store_true")
    args = p.parse_args(argv)
    if not args.caption_extension.startswith("."):
        args.caption_extension = "." + args.caption_extension
    for name in ("batch_size", "max_new_tokens", "num_beams"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.trigger is not None and (not args.trigger.strip() or "," in args.trigger or "\n" in args.trigger):
        raise UserError(f"--trigger must be a non-empty word without commas or newlines, got {args.trigger!r}")
    return args


def training_settings(adapter: str | None) -> dict:
    """What the adapter was trained with (its run's recipe.yaml): the base model and image settings."""
    if not adapter:
        return {}
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"no LoRA adapter in {adapter} (adapter_config.json missing)")
    recipe = folder / "recipe.yaml"
    return (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}) if recipe.is_file() else {}


# --- existing captions -----------------------------------------------------------------------
def read_metadata(path: Path, column: str) -> list[dict]:
    """Rows of an existing metadata.jsonl, in order; a broken file stops the run (rewriting it would lose rows)."""
    if not path.is_file():
        return []
    rows = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 (byte {exc.start}); fix it before captioning, it is rewritten in place")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number}: not valid JSON ({exc.msg}); fix it before captioning") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise UserError(f"{path} line {number}: a row needs a \"file_name\" string")
        rows.append(row)
    return rows


def caption_lines(value) -> list[str] | None:
    """A caption cell (str, or list of str for dual captions) as non-empty lines; None if there is none."""
    values = value if isinstance(value, list) else [value]
    lines = [line.strip() for v in values if isinstance(v, str) for line in v.splitlines() if line.strip()]
    return lines or None


def read_sidecar(path: Path) -> tuple[list[str] | None, str | None]:
    """(lines, problem) of an existing kohya caption file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"{path.name} is not UTF-8 (byte {exc.start})"
    return caption_lines(text), None


def sidecar_of(root: Path, rel: str, extension: str) -> Path:
    return (root / rel).with_suffix(extension)


def check_extensions(root: Path, images: list[str], extension: str) -> None:
    """Refuse to start a mixed set: sidecars in another caption extension mean the user asked for the wrong one."""
    for other in OTHER_CAPTION_EXTENSIONS:
        if other == extension:
            continue
        found = [rel for rel in images if sidecar_of(root, rel, other).is_file()]
        if found:
            raise UserError(
                f"{root}: {len(found)} image(s) already have '{other}' captions (e.g. {sidecar_of(root, found[0], other)}) "
                f"but --caption-extension is '{extension}'; pass --caption-extension {other} so the set stays in one format"
            )


# --- caption text ----------------------------------------------------------------------------
def trim_loops(text: str, max_repeats: int = 2) -> str:
    """Cut a degenerate tail: an n-gram (1–4 words) repeated more than `max_repeats` times in a row."""
    words = text.split()
    for n in range(1, 5):
        i = 0
        while i + n <= len(words):
            gram = words[i : i + n]
            repeats = 1
            while words[i + repeats * n : i + (repeats + 1) * n] == gram:
                repeats += 1
            if repeats > max_repeats:
                words = words[: i + n]  # keep one copy, drop the loop and whatever followed it
                break
            i += 1
    return " ".join(words)


# Control characters and U+FFFD (a byte-level token cut mid-character) never belong in a caption.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")
# A 2–12-character unit repeated 4+ times in a row inside a word ("880880880880", "hahahaha").
_CHAR_LOOP = re.compile(r"(.{2,12}?)\1{3,}")


def clean_caption(raw: str, kind: str, trigger: str | None) -> str:
    """One line, printable, no loop, trigger first exactly once; tags de-duplicated. '' if nothing is left."""
    text = raw.replace("\r", "\n").split("\n")[0]
    text = " ".join(_UNPRINTABLE.sub(" ", text).split())
    text = trim_loops(_CHAR_LOOP.sub(r"\1", text))
    if kind == "tags":
        tags, seen = [], set()
        for tag in (t.strip(" .") for t in text.split(",")):
            if tag and tag.lower() not in seen:
                seen.add(tag.lower())
                tags.append(tag)
        text = ", ".join(tags)
    if trigger:
        first, _, rest = text.partition(",")
        if first.strip().lower() == trigger.lower():
            text = rest.strip()
        if not text:
            return ""
        text = f"{trigger}, {text}"
    return text


# --- write -----------------------------------------------------------------------------------
def write_sidecar(path: Path, lines: list[str]) -> None:
    """kohya reads the first line (all lines, one at random per step, with --enable_wildcard)."""
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_metadata(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def metadata_value(lines: list[str]):
    return lines[0] if len(lines) == 1 else list(lines)


# --- job -------------------------------------------------------------------------------------
def load_captioner(args, trained: dict):
    from trl import ModelConfig

    from vlm_tune.core.modeling import load_for_inference

    model_name = args.model or trained.get("model_name_or_path")
    if not model_name:
        raise UserError("no model: pass --model (or an --adapter whose folder holds the run's recipe.yaml)")
    load_in_4bit = args.load_in_4bit if args.load_in_4bit is not None else bool(trained.get("load_in_4bit", False))
    model_args = ModelConfig(
        model_name_or_path=model_name,
        dtype=args.dtype or trained.get("dtype") or "auto",
        load_in_4bit=load_in_4bit,
        bnb_4bit_quant_type=trained.get("bnb_4bit_quant_type", "nf4"),
        use_bnb_nested_quant=bool(trained.get("use_bnb_nested_quant", True)),
    )
    splitting = args.do_image_splitting if args.do_image_splitting is not None else trained.get("do_image_splitting")
    longest_edge = args.image_longest_edge or trained.get("image_longest_edge")
    return load_for_inference(model_args, args.trust_remote_code, longest_edge, splitting, args.adapter,
                              dequantize_on_cpu=not args.keep_4bit)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    root = Path(args.images_dir)
    if not root.is_dir():
        raise UserError(f"images folder not found: {args.images_dir}")
    trained = training_settings(args.adapter)
    kohya, diffusers = args.format in ("kohya", "both"), args.format in ("diffusers", "both")

    # find images and the captions already there (caption of record: sidecar first, then metadata)
    images, refused = find_images(root)
    failed = [{"file": rel, "reason": reason} for rel, reason in refused]
    if kohya:
        check_extensions(root, images, args.caption_extension)
    metadata_path = root / METADATA
    rows = read_metadata(metadata_path, args.caption_column) if diffusers else []
    row_of = {}
    for row in rows:
        try:
            safe_join(root, row["file_name"])
        except ValueError as exc:
            raise UserError(f"{metadata_path}: {exc}; fix the row before captioning") from None
        row_of[row["file_name"]] = row
    existing: dict[str, list[str]] = {}
    problems: list[dict] = []
    sidecar_owner: dict[Path, str] = {}
    todo: list[str] = []
    for rel in images:
        if kohya:
            sidecar = sidecar_of(root, rel, args.caption_extension)
            if sidecar in sidecar_owner:  # a.png and a.jpg in one folder: kohya pairs captions by stem
                failed.append({"file": rel, "reason": f"shares kohya caption file {sidecar.name} with {sidecar_owner[sidecar]}"})
                continue
            sidecar_owner[sidecar] = rel
            if sidecar.exists():
                lines, problem = read_sidecar(sidecar)
                if problem:
                    problems.append({"file": rel, "reason": problem + " (left as is)"})
                existing[rel] = lines or []  # an empty file is still the user's: kept, and flagged by the QA
        if rel not in existing and rel in row_of:
            existing[rel] = caption_lines(row_of[rel].get(args.caption_column)) or []
        if args.overwrite or rel not in existing:
            todo.append(rel)
    skipped = [rel for rel in images if rel in existing and rel not in todo]
    left_for_later = len(todo) - min(len(todo), args.limit if args.limit is not None else len(todo))
    todo = todo[: len(todo) - left_for_later]

    # fill a missing format from the caption of record, so kohya and diffusers agree
    filled = 0
    for rel in skipped:
        lines = existing[rel]
        if not lines:
            continue
        if kohya and not sidecar_of(root, rel, args.caption_extension).exists():
            write_sidecar(sidecar_of(root, rel, args.caption_extension), lines)
            filled += 1
        if diffusers and caption_lines((row_of.get(rel) or {}).get(args.caption_column)) is None:
            row_of.setdefault(rel, {"file_name": rel})[args.caption_column] = metadata_value(lines)
            if row_of[rel] not in rows:
                rows.append(row_of[rel])
            filled += 1
    if diffusers and filled:
        write_metadata(metadata_path, rows)

    print(f"{root}: {len(images)} image(s); {len(skipped)} already captioned (kept{', --overwrite not set' if skipped else ''}); "
          f"{len(todo)} to caption; {len(refused)} refused")
    written, seconds = [], 0.0
    if todo:
        model, processor = load_captioner(args, trained)
        started = time.perf_counter()  # throughput of captioning, not of loading the model
        system_prompt = args.system_prompt or trained.get("system_prompt")
        kinds = {"caption": ["caption"], "tags": ["tags"], "dual": ["tags", "caption"]}[args.mode]
        prompts = {"caption": args.prompt, "tags": args.tags_prompt}
        generate_kwargs = {"num_beams": args.num_beams, "repetition_penalty": args.repetition_penalty,
                           "no_repeat_ngram_size": args.no_repeat_ngram_size}
        bar = tqdm(total=len(todo), desc="Captioning", unit="img", dynamic_ncols=True)
        for start in range(0, len(todo), args.batch_size):
            batch, opened = todo[start : start + args.batch_size], []
            for rel in batch:
                image, note = open_image(root / rel, args.max_pixels)
                if image is None:
                    failed.append({"file": rel, "reason": note})
                else:
                    opened.append((rel, image))
                    if note:
                        problems.append({"file": rel, "reason": note + " (converted for captioning)"})
            outputs = {kind: [] for kind in kinds}
            if opened:
                from vlm_tune.core.generation import generate_answers

                for kind in kinds:
                    raw = generate_answers(model, processor, [im for _, im in opened], [prompts[kind]] * len(opened),
                                           system_prompt, batch_size=len(opened), max_new_tokens=args.max_new_tokens,
                                           show_progress=False, **generate_kwargs)
                    outputs[kind] = [clean_caption(text, kind, args.trigger) for text in raw]
            # write this batch: sidecars first, then metadata.jsonl; each file is replaced atomically
            for i, (rel, _) in enumerate(opened):
                lines = [outputs[kind][i] for kind in kinds]
                if not all(lines):
                    failed.append({"file": rel, "reason": "the model produced an empty caption (not written)"})
                    continue
                if kohya:
                    write_sidecar(sidecar_of(root, rel, args.caption_extension), lines)
                if diffusers:
                    row = row_of.get(rel)
                    if row is None:
                        row = row_of[rel] = {"file_name": rel}
                        rows.append(row)
                    row[args.caption_column] = metadata_value(lines)
                existing[rel] = lines
                written.append(rel)
            if diffusers and opened:
                write_metadata(metadata_path, rows)
            bar.update(len(batch))
        bar.close()
        seconds = time.perf_counter() - started

    # QA report of the whole caption set (kept + new)
    from vlm_tune.caption.lint import analyze_captions, write_report

    counts = {
        "images": len(images), "written": len(written), "skipped_existing": len(skipped), "filled_other_format": filled,
        "failed": len(failed), "left_for_a_later_run": left_for_later,
        "seconds": round(seconds, 2), "images_per_second": round(len(written) / seconds, 3) if written else None,
        "failed_files": sorted(failed, key=lambda f: f["file"]), "notes": problems,
        "format": args.format, "mode": args.mode, "caption_extension": args.caption_extension if kohya else None,
    }
    entries = [{"file": rel, "captions": existing[rel]} for rel in images if rel in existing]
    report = analyze_captions(entries, trigger=args.trigger, counts=counts)
    json_path, md_path = write_report(report, Path(args.report_dir or root), title=f"Caption QA report — {root}")

    print(f"written {len(written)}, kept {len(skipped)}, failed {len(failed)}"
          + (f", {len(written) / seconds:.2f} img/s" if written else ""))
    for item in failed:
        print(f"  skipped {item['file']}: {item['reason']}")
    suspicious = report.get("suspicious", [])
    if suspicious:
        print(f"  {len(suspicious)} suspicious caption(s) listed in {md_path}")
    print(f"report: {md_path} and {json_path}")
    return 1 if args.strict and failed else 0
